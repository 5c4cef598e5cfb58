r"""Wall time and peak memory of `vdsr_jax.upscale` on a large image.

Each configuration runs in its own subprocess, so its peak resident memory
(getrusage ru_maxrss) is its own: the process imports JAX, loads the
parameters, builds a synthetic RGB image and upscales it once (the time
includes compilation, as a command-line run would).

  python benchmarks/upscale_memory.py                 # 1920x1080 RGB, x2, tiled
  python benchmarks/upscale_memory.py --untiled --json_out=/tmp/mem.json

The 20-layer, 64-filter network uses the authors' weights when found
(--weights, else <repo>/../shared/reference/VDSR_Official.mat), otherwise
random parameters of the same shape (same cost). Target: tiled peak RSS
under 2 GB for 1080p x2.
"""

import json
import os
import pathlib
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]

_WIDTH = flags.DEFINE_integer('width', 1920, 'Input image width.')
_HEIGHT = flags.DEFINE_integer('height', 1080, 'Input image height.')
_SCALE = flags.DEFINE_float('scale', 2.0, 'Upscaling factor.')
_TILE = flags.DEFINE_integer('tile', None, 'Tile size for the tiled run '
                             '(default: upscale\'s automatic choice).')
_UNTILED = flags.DEFINE_boolean('untiled', False, 'Also run without tiling '
                                '(needs several GB at 1080p).')
_WEIGHTS = flags.DEFINE_string('weights', None, 'VDSR weights; default: '
                               'VDSR_Official.mat from shared/, else random.')
_JSON_OUT = flags.DEFINE_string('json_out', None, 'Also write the results '
                                'as JSON here.')
_CHILD = flags.DEFINE_string('child', None, 'Internal: run one '
                             'configuration ("auto" or a tile size) and print '
                             'its measurements.')


def _default_weights():
  if _WEIGHTS.value:
    return _WEIGHTS.value
  data = os.environ.get('VDSR_DATA_DIR')
  shared = pathlib.Path(data).parent if data else REPO.parent / 'shared'
  mat = shared / 'reference' / 'VDSR_Official.mat'
  return str(mat) if mat.exists() else None


def _synthetic_image(height, width):
  """A deterministic photo-like uint8 RGB image: smooth shapes plus noise."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rs = np.random.RandomState(0)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  img = np.empty((height, width, 3), np.float32)
  for c in range(3):
    fy, fx, ph = rs.rand(3) * (0.05, 0.05, 6.0)
    img[..., c] = 0.5 + 0.3 * np.sin(fy * yy + fx * xx + ph)
  img += rs.rand(height, width, 3).astype(np.float32) * 0.2 - 0.1
  return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def _rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_child(config):
  """Measures one configuration in this process; prints a JSON line."""
  import jax  # pylint: disable=g-import-not-at-top
  from vdsr_jax import models  # pylint: disable=g-import-not-at-top
  from vdsr_jax import upscaling  # pylint: disable=g-import-not-at-top
  from vdsr_jax import weights  # pylint: disable=g-import-not-at-top
  path = _default_weights()
  if path:
    params = weights.load_params(path)
  else:
    params = models.init_params(jax.random.PRNGKey(0), models.VDSR())
  img = _synthetic_image(_HEIGHT.value, _WIDTH.value)
  tile = None if config == 'auto' else int(config)
  rss_before = _rss_mb()
  start = time.perf_counter()
  out = upscaling.upscale(params, img, _SCALE.value, tile=tile)
  seconds = time.perf_counter() - start
  print('RESULT ' + json.dumps({
      'config': 'untiled' if tile == 0 else f'tiled ({config})',
      'weights': path or 'random',
      'input': f'{_WIDTH.value}x{_HEIGHT.value}x3',
      'output': f'{out.shape[1]}x{out.shape[0]}x{out.shape[2]}',
      'scale': _SCALE.value,
      'seconds': round(seconds, 2),
      'rss_before_mb': round(rss_before, 1),
      'peak_rss_mb': round(_rss_mb(), 1),
  }), flush=True)


def run_parent():
  configs = ['auto' if _TILE.value is None else str(_TILE.value)]
  if _UNTILED.value:
    configs.append('0')
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
      [str(REPO)] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
  results = []
  for config in configs:
    args = [sys.executable, __file__, f'--child={config}',
            f'--width={_WIDTH.value}', f'--height={_HEIGHT.value}',
            f'--scale={_SCALE.value}']
    if _WEIGHTS.value:
      args.append(f'--weights={_WEIGHTS.value}')
    proc = subprocess.run(args, env=env, capture_output=True, text=True,
                          check=False)
    lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
    if proc.returncode or not lines:
      print(f'{config}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}',
            file=sys.stderr)
      continue
    results.append(json.loads(lines[-1][len('RESULT '):]))
  print(f'{"config":<14} {"input":>12} {"output":>12} {"time (s)":>9} '
        f'{"RSS before (MB)":>16} {"peak RSS (MB)":>14}')
  for r in results:
    print(f'{r["config"]:<14} {r["input"]:>12} {r["output"]:>12} '
          f'{r["seconds"]:>9.2f} {r["rss_before_mb"]:>16.0f} '
          f'{r["peak_rss_mb"]:>14.0f}')
  if results:
    print(f'weights: {results[0]["weights"]}; time includes compilation.')
  if _JSON_OUT.value:
    pathlib.Path(_JSON_OUT.value).write_text(json.dumps(results, indent=2))
  return 0 if len(results) == len(configs) else 1


def main(argv):
  del argv
  if _CHILD.value:
    run_child(_CHILD.value)
    return 0
  return run_parent()


if __name__ == '__main__':
  app.run(main)
