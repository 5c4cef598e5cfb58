r"""Prints the README's results table (markdown) from evaluation JSON files.

  python experiments/results_table.py \
      --rows="bicubic (ours)=experiments/results/bicubic.json,authors' weights (ours)=experiments/results/authors_weights.json"

Each JSON is what `experiments/evaluate.py --json_out` writes. The paper's
Table 3 (bicubic and VDSR rows) is added from --paper_table. The last line is
each column's mean PSNR over all cells (n/a if a cell is missing).
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

# pylint: disable=g-import-not-at-top
from vdsr_jax import evaluation
from vdsr_jax import reporting
# pylint: enable=g-import-not-at-top

_ROWS = flags.DEFINE_list('rows', [], 'label=path.json pairs, in order.')
_PAPER = flags.DEFINE_string('paper_table', None,
                             'paper_table3.csv (default: beside the data).')
_DATASETS = flags.DEFINE_list('datasets', list(evaluation.BENCHMARKS),
                              'Column groups.')
_SCALES = flags.DEFINE_list('scales', ['2', '3', '4'], 'Scales.')


def _cell(r):
  return f'{r["psnr"]:.2f} / {r["ssim"]:.4f}' if r else 'n/a'


def parse_rows(items):
  """['label=path.json', ...] -> [(label, results)]; one clear error if bad."""
  rows = []
  for label, path in reporting.named_paths(items, 'rows', 'LABEL').items():
    try:
      results = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as e:
      raise ValueError(f'--rows: cannot read {path} as evaluation JSON '
                       f'({e}).') from None
    if not isinstance(results, dict):
      raise ValueError(f'--rows: {path} is not what evaluate.py --json_out '
                       'writes (a {dataset: {scale: {psnr, ssim}}} object).')
    rows.append((label, results))
  return rows


def main(argv):
  del argv
  try:
    rows = parse_rows(_ROWS.value)
  except ValueError as e:
    raise app.UsageError(str(e))
  paper = evaluation.load_paper_table(_PAPER.value)
  for method in ('bicubic', 'vdsr'):
    table = {d: {s: {'psnr': paper[(d, int(s))][f'{method}_psnr'],
                     'ssim': paper[(d, int(s))][f'{method}_ssim']}
                 for s in _SCALES.value if (d, int(s)) in paper}
             for d in _DATASETS.value}
    rows.append((f'{method} (paper)', table))
  print('| dataset | scale | ' + ' | '.join(label for label, _ in rows) + ' |')
  print('|---|---|' + '---|' * len(rows))
  for d in _DATASETS.value:
    for s in _SCALES.value:
      cells = [_cell(res.get(d, {}).get(s)) for _, res in rows]
      print(f'| {d} | x{s} | ' + ' | '.join(cells) + ' |')
  means = []
  for _, res in rows:
    cells = [res.get(d, {}).get(s) for d in _DATASETS.value
             for s in _SCALES.value]
    means.append('n/a' if None in cells else
                 f'{sum(c["psnr"] for c in cells) / len(cells):.2f}')
  print('| mean PSNR | all | ' + ' | '.join(means) + ' |')


if __name__ == '__main__':
  app.run(main)
