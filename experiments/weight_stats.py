r"""Per-layer statistics of VDSR weights, side by side, to compare trainings.

  python experiments/weight_stats.py \
      --weights="authors=../shared/reference/VDSR_Official.mat,ours=vdsr_jax/pretrained/vdsr_291.npz" \
      [--init_seed=0] [--json_out=FILE]

For each layer and set of weights: the kernel's L2 norm and standard
deviation, its excess kurtosis (0 for the Gaussian initialisation; large
when a few taps dominate) and the mean correlation of each 3x3 kernel's
centre tap with its four neighbours over all (input, output) pairs (0 at
initialisation; positive for smooth, trained kernels), and the mean |bias|.
`--init_seed` adds the He initialisation of that seed (`train.py --seed`)
as a reference column. Weights: any file `vdsr_jax.load_params` reads
(.mat, .npz, .pth, orbax checkpoint).
"""

import json
import pathlib
import sys
from typing import Dict, Mapping

from absl import app
from absl import flags
import numpy as np
from scipy import stats

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_WEIGHTS = flags.DEFINE_list(
    'weights', None, 'NAME=PATH pairs, comma-separated.', required=True)
_INIT_SEED = flags.DEFINE_integer(
    'init_seed', None, 'Also show the initialisation of this seed.')
_JSON_OUT = flags.DEFINE_string('json_out', None, 'Write the table here.')


def kernel_stats(kernel: np.ndarray) -> Dict[str, float]:
  """Statistics of one (3, 3, in, out) kernel."""
  k = np.asarray(kernel, np.float64)
  if k.ndim != 4 or k.shape[:2] != (3, 3):
    raise ValueError(f'Expected a (3, 3, in, out) kernel, got {k.shape}.')
  flat = k.ravel()
  std = float(flat.std())
  centre = k[1, 1].ravel()
  corr = 0.0
  if centre.size > 1:  # one (input, output) pair: no correlation to take
    corr = float(np.mean([np.corrcoef(centre, n.ravel())[0, 1]
                          for n in (k[0, 1], k[2, 1], k[1, 0], k[1, 2])]))
  return {'norm': float(np.linalg.norm(flat)), 'std': std,
          'kurtosis': float(stats.kurtosis(flat)) if std else 0.0,
          'neighbour_corr': corr}


def layer_stats(params: Mapping) -> Dict[str, Dict[str, float]]:
  """kernel_stats plus the mean |bias| for every conv layer, in order."""
  out = {}
  for i in range(len(params)):
    layer = params[f'conv{i}']
    row = kernel_stats(layer['kernel'])
    row['bias_mean_abs'] = float(np.mean(np.abs(np.asarray(layer['bias']))))
    out[f'conv{i}'] = row
  return out


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top
  from vdsr_jax import reporting
  from vdsr_jax import weights
  # pylint: enable=g-import-not-at-top
  try:
    paths = reporting.named_paths(_WEIGHTS.value, 'weights')
  except ValueError as e:
    raise app.UsageError(str(e))
  loaded = {name: weights.load_params(path) for name, path in paths.items()}
  depths = {len(params) for params in loaded.values()}
  if len(depths) != 1:
    raise app.UsageError(f'The weights have different depths: {depths}.')
  if _INIT_SEED.value is not None:
    import jax  # pylint: disable=g-import-not-at-top
    from vdsr_jax import models  # pylint: disable=g-import-not-at-top
    first = next(iter(loaded.values()))
    model = models.VDSR(depth=len(first),
                        features=int(np.shape(first['conv0']['kernel'])[-1]))
    loaded[f'init{_INIT_SEED.value}'] = models.init_params(
        jax.random.PRNGKey(_INIT_SEED.value), model, 41)
  tables = {name: layer_stats(params) for name, params in loaded.items()}
  names = list(tables)
  for key, fmt in (('norm', '{:8.3f}'), ('std', '{:8.4f}'),
                   ('kurtosis', '{:8.2f}'), ('neighbour_corr', '{:+8.2f}'),
                   ('bias_mean_abs', '{:8.4f}')):
    print(f'\n{key}\n{"layer":8s}' + ''.join(f'{n[:10]:>11s}' for n in names))
    for layer in tables[names[0]]:
      print(f'{layer:8s}' + ''.join(
          '   ' + fmt.format(tables[n][layer][key]) for n in names))
  if _JSON_OUT.value:
    from vdsr_jax import atomic  # pylint: disable=g-import-not-at-top
    atomic.write_text(_JSON_OUT.value, json.dumps(tables, indent=1) + '\n')


if __name__ == '__main__':
  app.run(main)
