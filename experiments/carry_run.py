r"""Packs a training run into one file, or unpacks it, to resume elsewhere.

  # Here: the run's flags, metrics and newest checkpoint in one .tgz.
  python experiments/carry_run.py --pack --workdir=/tmp/vdsr --archive=run.tgz
  # There (another machine, a later session): a new workdir from it, then
  # the same training command continues the run exactly.
  python experiments/carry_run.py --unpack --archive=run.tgz --workdir=/tmp/vdsr
  python experiments/train.py --flagfile=... --workdir=/tmp/vdsr

See vdsr_jax/run_archive.py for what goes in and the guarantees.
"""

import json
import pathlib
import sys

from absl import app
from absl import flags

try:
  import vdsr_jax  # pylint: disable=unused-import
except ImportError:
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from vdsr_jax import run_archive
# pylint: enable=g-import-not-at-top,wrong-import-position

_PACK = flags.DEFINE_bool('pack', False, 'Write --workdir to --archive.')
_UNPACK = flags.DEFINE_bool('unpack', False,
                            'Create --workdir (must not exist) from --archive.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'The training workdir.')
_ARCHIVE = flags.DEFINE_string('archive', None, 'The .tgz file.')
flags.mark_flags_as_required(['workdir', 'archive'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _PACK.value == _UNPACK.value:
    raise app.UsageError('Give exactly one of --pack and --unpack.')
  try:
    if _PACK.value:
      info = run_archive.pack(_WORKDIR.value, _ARCHIVE.value)
    else:
      info = run_archive.unpack(_ARCHIVE.value, _WORKDIR.value)
  except run_archive.RunArchiveError as e:
    sys.exit(f'Error: {e}')
  print(json.dumps({'step': info['step'], 'files': len(info['files'])}))


if __name__ == '__main__':
  app.run(main)
