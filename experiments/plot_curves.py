r"""Draws curves.png and prints the summary tables of a (possibly unfinished) run.

  python experiments/plot_curves.py --workdir=workdirs/vdsr_291 [--out=curves.png]

train.py does this at the end of a run; use this for a run that was stopped
(Ctrl-C) or is still going. The second table has a row per learning-rate
phase: its first and last `--window` steps' mean training loss, i.e. whether
the phase was still improving when it ended.
"""

import pathlib
import sys

from absl import app
from absl import flags

try:
  import vdsr_jax  # pylint: disable=unused-import
except ImportError:
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from vdsr_jax import reporting  # pylint: disable=g-import-not-at-top
from vdsr_jax import train

_WORKDIR = flags.DEFINE_string('workdir', None, 'The run folder.',
                               required=True)
_OUT = flags.DEFINE_string('out', None,
                           'PNG to write (default: <workdir>/curves.png).')
_WINDOW = flags.DEFINE_integer(
    'window', 2000, 'Steps at the start and end of each learning-rate phase '
    'whose training loss the phase table averages.', lower_bound=1)


def main(argv):
  del argv
  workdir = pathlib.Path(_WORKDIR.value)
  records = reporting.read_metrics(workdir)
  if not records:
    raise app.UsageError(f'no metrics.jsonl records in {workdir}')
  paper = train.paper_psnr(['set5'])
  out = pathlib.Path(_OUT.value or workdir / reporting.CURVES_FILE)
  reporting.plot_curves(records, out, paper)
  print(reporting.summary_table(records, paper))
  print()
  print(reporting.phase_table(records, _WINDOW.value))
  print(f'Wrote {out}')


if __name__ == '__main__':
  app.run(main)
