r"""Averages VDSR checkpoints into one set of weights (checkpoint averaging).

  python experiments/average_weights.py \
      --weights=/tmp/wd_a,/tmp/wd_b/checkpoints/96176,run2/params.npz \
      [--coefficients=1,1,2] --out=/tmp/averaged.npz

The element-wise mean (or the `--coefficients`-weighted mean, normalised to
sum to 1) of the parameters of several checkpoints of one architecture:
Polyak averaging of a run's checkpoints (SWA, Izmailov et al., when they
come from a constant-lr phase), or of runs that share their first steps.
VDSR has no batch statistics to recompute, so the result is ready to
evaluate:
`evaluate.py --method=vdsr --weights=/tmp/averaged.npz`. Weights: anything
`vdsr_jax.load_params` reads (.mat, .npz, .pth, an orbax checkpoint or a
training workdir, whose latest checkpoint is used). Writes a checksummed .npz
atomically; a bad input is one error and writes nothing.
"""

import pathlib
import sys

from absl import app
from absl import flags
from absl import logging

try:
  import vdsr_jax  # pylint: disable=unused-import
except ImportError:  # Running from a checkout without `pip install -e .`.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from vdsr_jax import weights  # pylint: disable=g-import-not-at-top

_WEIGHTS = flags.DEFINE_list(
    'weights', None, 'The weights to average, comma-separated paths.',
    required=True)
_COEFFICIENTS = flags.DEFINE_list(
    'coefficients', None, 'One non-negative weight per --weights entry '
    '(normalised to sum to 1); default: equal.')
_OUT = flags.DEFINE_string('out', None, 'The averaged weights, a .npz file.',
                           required=True)


def main(argv):
  del argv
  out = pathlib.Path(_OUT.value).expanduser()
  if out.suffix != '.npz':
    raise app.UsageError(f'--out must name a .npz file, got {str(out)!r}.')
  if len(_WEIGHTS.value) < 2:
    raise app.UsageError('--weights needs at least two checkpoints to '
                         f'average, got {_WEIGHTS.value}.')
  coefficients = None
  if _COEFFICIENTS.value is not None:
    try:
      coefficients = [float(c) for c in _COEFFICIENTS.value]
    except ValueError:
      raise app.UsageError('--coefficients must be numbers, got '
                           f'{_COEFFICIENTS.value}.') from None
  try:
    loaded = [weights.load_params(path) for path in _WEIGHTS.value]
    averaged = weights.average_params(loaded, coefficients)
  except weights.WeightsError as e:
    raise app.UsageError(str(e)) from None
  weights.save_npz(averaged, out)
  logging.info('Averaged %d checkpoints (coefficients %s) into %s.',
               len(loaded), coefficients or 'equal', out)


if __name__ == '__main__':
  app.run(main)
