r"""Scores bicubic or VDSR on the SR benchmarks with the paper's protocol.

  python experiments/evaluate.py --method=bicubic
  python experiments/evaluate.py --method=vdsr \
      --weights=../shared/reference/VDSR_Official.mat --json_out=results.json

Prints one table (dataset x scale: PSNR, SSIM, the paper's value and the
difference) and optionally writes {"set5": {"2": {"psnr": .., "ssim": ..}}}
(--json_out) and every image's scores, {"set5": {"2": {"baby": {"psnr": ..,
"ssim": ..}, ..}}} (--per_image_json).
"""

import json
import pathlib
import sys

from absl import app
from absl import flags

try:
  import vdsr_jax  # pylint: disable=unused-import
except ImportError:  # Running from a checkout without `pip install -e .`.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from vdsr_jax import atomic  # pylint: disable=g-import-not-at-top
from vdsr_jax import datasets as datasets_lib
from vdsr_jax import evaluation
from vdsr_jax import train_config
from vdsr_jax import weights as weights_lib

_METHOD = flags.DEFINE_enum('method', 'vdsr', list(evaluation.METHODS),
                            'What to score: bicubic upscaling or the network.')
_WEIGHTS = flags.DEFINE_string(
    'weights', None, 'VDSR weights: .mat (authors), .npz (vdsr_jax export), '
    '.pth (PyTorch port, read without unpickling) or an orbax '
    'checkpoint/workdir. Default: the weights shipped in the package.')
_DATASETS = flags.DEFINE_list('datasets', list(evaluation.BENCHMARKS),
                              'Benchmarks to score.')
_SCALES = flags.DEFINE_list('scales', ['2', '3', '4'], 'Integer scale factors.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                train_config.DATA_DIR_HELP)
_TFDS_DIR = flags.DEFINE_string('tfds_dir', None,
                                train_config.TFDS_DIR_HELP)
_JSON_OUT = flags.DEFINE_string('json_out', None, 'Write the results here.')
_PER_IMAGE_JSON = flags.DEFINE_string(
    'per_image_json', None, "Also write every image's PSNR and SSIM here.")
_PAPER_TABLE = flags.DEFINE_string(
    'paper_table', None, "CSV of the paper's Table 3 to compare against "
    '(default: reference/paper_table3.csv beside the data folder, if any).')
_BUCKET = flags.DEFINE_integer(
    'bucket', 32, 'Pad images up to multiples of this many pixels so one '
    'compiled program serves many sizes (0: compile per size).')


def _fail(message: str) -> None:
  print(f'evaluate.py: error: {message}', file=sys.stderr)
  sys.exit(2)


def _write_json_atomically(obj, path: str) -> None:
  with atomic.write(path, 'w') as f:
    json.dump(obj, f, indent=2)
    f.write('\n')


def _paper_table():
  path = _PAPER_TABLE.value
  if path is None:
    try:
      default = (datasets_lib.source_dir(_DATA_DIR.value).parent /
                 'reference' / 'paper_table3.csv')
    except datasets_lib.DatasetError:
      return None
    if not default.exists():
      return None
    path = default
  return evaluation.load_paper_table(path)


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}')
  try:
    scales = [int(s) for s in _SCALES.value]
  except ValueError:
    _fail(f'--scales must be integers, got {_SCALES.value}')
  unknown = sorted(set(_DATASETS.value) - set(evaluation.BENCHMARKS))
  if unknown:
    _fail(f'unknown datasets {unknown}; choose from {evaluation.BENCHMARKS}')
  for flag, path in (('json_out', _JSON_OUT.value),
                     ('per_image_json', _PER_IMAGE_JSON.value)):
    # Checked before scoring, which can take many minutes.
    if path and not pathlib.Path(path).resolve().parent.is_dir():
      _fail(f'--{flag}={path}: the folder {pathlib.Path(path).parent} does '
            'not exist; create it or write elsewhere.')
  params = None
  try:
    if _METHOD.value == 'vdsr':
      params = (weights_lib.load_params(_WEIGHTS.value) if _WEIGHTS.value
                else weights_lib.load_pretrained())
    per_image = evaluation.evaluate_per_image(
        _METHOD.value, params, datasets=_DATASETS.value, scales=scales,
        data_dir=_DATA_DIR.value, tfds_dir=_TFDS_DIR.value,
        bucket=_BUCKET.value or None)
  except ValueError as e:  # WeightsError, DatasetError, bad scales.
    _fail(str(e))
  results = evaluation.mean_scores(per_image)
  print(evaluation.format_table(results, _METHOD.value, _paper_table()))
  for path, obj in ((_JSON_OUT.value, results),
                    (_PER_IMAGE_JSON.value, per_image)):
    if path:
      _write_json_atomically(obj, path)
      print(f'Wrote {path}')


if __name__ == '__main__':
  app.run(main)
