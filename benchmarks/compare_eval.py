r"""Cell-by-cell differences between two evaluation JSON files.

  python benchmarks/compare_eval.py BEFORE.json AFTER.json [--max_db=0.01]

Both are what `experiments/evaluate.py --json_out` writes ({dataset: {scale:
{"psnr", "ssim"}}}). Prints every common cell's PSNR and SSIM in both and
their difference, then the largest |PSNR difference|; exits 1 if it exceeds
--max_db (the accuracy bar of a faster path: the paper's evaluation must
not move by more than 0.01 dB), or if the files share no cell.
"""

import argparse
import json
import sys


def differences(before: dict, after: dict):
  """[(dataset, scale, before_cell, after_cell)] for the cells in both."""
  cells = []
  for dataset, scales in before.items():
    for scale, cell in scales.items():
      other = after.get(dataset, {}).get(scale)
      if other is not None:
        cells.append((dataset, scale, cell, other))
  return cells


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('before')
  parser.add_argument('after')
  parser.add_argument('--max_db', type=float, default=0.01)
  args = parser.parse_args(argv)
  with open(args.before) as f:
    before = json.load(f)
  with open(args.after) as f:
    after = json.load(f)
  cells = differences(before, after)
  if not cells:
    print(f'error: {args.before} and {args.after} share no dataset/scale '
          'cell', file=sys.stderr)
    return 1
  print(f'{"cell":<14} {"PSNR before":>12} {"PSNR after":>12} {"dPSNR":>10} '
        f'{"dSSIM":>10}')
  worst = 0.0
  for dataset, scale, b, a in cells:
    d_psnr, d_ssim = a['psnr'] - b['psnr'], a['ssim'] - b['ssim']
    worst = max(worst, abs(d_psnr))
    print(f'{dataset + " x" + scale:<14} {b["psnr"]:12.5f} {a["psnr"]:12.5f} '
          f'{d_psnr:+10.5f} {d_ssim:+10.6f}')
  verdict = 'within' if worst <= args.max_db else 'OVER'
  print(f'largest |dPSNR| {worst:.5f} dB over {len(cells)} cells: {verdict} '
        f'{args.max_db} dB')
  return 0 if worst <= args.max_db else 1


if __name__ == '__main__':
  sys.exit(main())
