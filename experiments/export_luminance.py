r"""Writes a training set's luminance planes as 8-bit PNGs, for another machine.

  python experiments/export_luminance.py --out=/tmp/train291_y
  python experiments/train.py --flagfile=experiments/configs/vdsr_paper.flags \
      --train_images_dir=/tmp/train291_y --eval_images_dir=../shared/datasets/Set5 ...

The training pipeline uses only the Y channel (`input_pipeline.luminance`:
MATLAB's rgb2ycbcr rounded to uint8), so the Y planes, written losslessly and
named 000.png, 001.png, ... in the dataset's order, give bit-identical
batches to the TFDS dataset while needing neither TFDS nor the RGB files:
train291 becomes ~21 MB instead of ~57 MB. The folder appears complete or not
at all (written beside it, then renamed).
"""

import pathlib
import shutil
import sys
import tempfile

from absl import app
from absl import flags
from PIL import Image

try:
  import vdsr_jax  # pylint: disable=unused-import
except ImportError:
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from vdsr_jax import datasets
from vdsr_jax import input_pipeline
from vdsr_jax import train_config
# pylint: enable=g-import-not-at-top,wrong-import-position

_OUT = flags.DEFINE_string('out', None, 'Folder to create (must not exist).')
_DATASET = flags.DEFINE_string('dataset', 'train291', 'Dataset to export.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                train_config.DATA_DIR_HELP)
_TFDS_DIR = flags.DEFINE_string('tfds_dir', None,
                                train_config.TFDS_DIR_HELP)
flags.mark_flag_as_required('out')


def main(argv):
  del argv
  out = pathlib.Path(_OUT.value).expanduser().absolute()
  if out.exists():
    raise app.UsageError(f'{out} already exists; choose a new --out.')
  source = datasets.load(_DATASET.value, data_dir=_DATA_DIR.value,
                         tfds_dir=_TFDS_DIR.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=out.name + '.', dir=out.parent))
  try:
    width = len(str(len(source) - 1))
    for i in range(len(source)):
      y = input_pipeline.luminance_u8(source[i]['image'])
      Image.fromarray(y).save(tmp / f'{i:0{width}d}.png', optimize=True)
    tmp.rename(out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  print(f'{len(source)} luminance planes of {_DATASET.value} in {out}')


if __name__ == '__main__':
  app.run(main)
