r"""What an accelerator's reduced-precision convolutions cost under the protocol.

On GPUs JAX's default float32 convolutions round both operands to TF32 (10
mantissa bits) and accumulate in float32; bfloat16 keeps 7 bits. Every GPU
training run of this project used the default, and `--compute_dtype` or
`network_forward(dtype=bfloat16)` offer bf16. This emulates such
arithmetic on the CPU: each layer's input and kernel are rounded to
`--mantissa_bits` (with float32's exponent range) and convolved in full
float32, then the weights are scored with the paper's protocol
(`evaluation.evaluate`), one column per precision:

  python experiments/precision_probe.py \
      --weights="authors=../shared/reference/VDSR_Official.mat,ours=vdsr_jax/pretrained/vdsr_291.npz" \
      --datasets=set5 --mantissa_bits=23,10,7 [--json_out=FILE]

23 bits is float32 itself (no rounding): it reproduces `evaluate.py`.
"""

import functools
import json
import pathlib
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from vdsr_jax import atomic
from vdsr_jax import evaluation
from vdsr_jax import reporting
from vdsr_jax import weights as weights_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

_WEIGHTS = flags.DEFINE_list(
    'weights', None, 'NAME=PATH pairs, comma-separated (any file '
    '`vdsr_jax.load_params` reads).', required=True)
_DATASETS = flags.DEFINE_list('datasets', ['set5'], 'Benchmarks to score.')
_SCALES = flags.DEFINE_list('scales', ['2', '3', '4'], 'Scale factors.')
_BITS = flags.DEFINE_list(
    'mantissa_bits', ['23', '10', '7'], 'Mantissa widths to emulate: 23 '
    'float32, 10 TF32, 7 bfloat16.')
_JSON_OUT = flags.DEFINE_string('json_out', None, 'Write the results here.')

FLOAT32_MANTISSA_BITS = 23


@functools.lru_cache(maxsize=None)
def rounded_forward(mantissa_bits: int):
  """A jitted VDSR forward whose convolutions see operands rounded to
  `mantissa_bits` (float32 accumulation), for any depth/width of params."""
  if not 1 <= mantissa_bits <= FLOAT32_MANTISSA_BITS:
    raise ValueError(f'mantissa_bits must be in 1..{FLOAT32_MANTISSA_BITS}, '
                     f'got {mantissa_bits}.')

  def rounded(a):
    if mantissa_bits == FLOAT32_MANTISSA_BITS:
      return a
    return jax.lax.reduce_precision(a, exponent_bits=8,
                                    mantissa_bits=mantissa_bits)

  @jax.jit
  def forward(params, x):
    depth = len(params)
    h = x
    for i in range(depth):
      layer = params[f'conv{i}']
      h = jax.lax.conv_general_dilated(
          rounded(h), rounded(layer['kernel']), (1, 1), 'SAME',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
          precision=jax.lax.Precision.HIGHEST)
      if 'bias' in layer:
        h = h + layer['bias']
      if i < depth - 1:
        h = jax.nn.relu(h)
    return x + h

  return forward


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  try:
    pairs = reporting.named_paths(_WEIGHTS.value, 'weights').items()
  except ValueError as e:
    raise app.UsageError(str(e))
  bits = [int(b) for b in _BITS.value]
  scales = [int(s) for s in _SCALES.value]
  results = {}
  for name, path in pairs:
    params = jax.tree.map(jnp.asarray, weights_lib.load_params(path))
    results[name] = {}
    for b in bits:
      scores = evaluation.evaluate('vdsr', params, _DATASETS.value, scales,
                                   progress=False, forward=rounded_forward(b))
      results[name][str(b)] = scores
      cells = ' '.join(f'{r["psnr"]:.3f}' for by_scale in scores.values()
                       for r in by_scale.values())
      print(f'{name:<12} {b:>2} bits  PSNR {cells}', flush=True)
  for name in results:
    base = results[name][str(bits[0])]
    for b in bits[1:]:
      deltas = [results[name][str(b)][d][s]['psnr'] - base[d][s]['psnr']
                for d in base for s in base[d]]
      print(f'{name:<12} {b:>2} bits - {bits[0]} bits: '
            + ' '.join(f'{v:+.3f}' for v in deltas)
            + f'  (mean {np.mean(deltas):+.4f} dB)')
  if _JSON_OUT.value:
    with atomic.write(_JSON_OUT.value, 'w') as f:
      json.dump(results, f, indent=2)
      f.write('\n')


if __name__ == '__main__':
  app.run(main)
