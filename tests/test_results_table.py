"""Tests of experiments/results_table.py, run as a user would (its own Python)."""

import json

import pytest


def _write_results(path, psnr):
  """An evaluate.py --json_out file for Set5 x2/x4 with one PSNR everywhere."""
  path.write_text(json.dumps(
      {'set5': {s: {'psnr': psnr, 'ssim': 0.9} for s in ('2', '4')}}))
  return path


@pytest.fixture
def paper_csv(tmp_path):
  path = tmp_path / 'paper.csv'
  path.write_text('# comment line\n'
                  'dataset,scale,bicubic_psnr,bicubic_ssim,vdsr_psnr,vdsr_ssim\n'
                  'set5,2,33.66,0.9299,37.53,0.9587\n'
                  'set5,4,28.42,0.8104,31.35,0.8838\n')
  return path


def test_table_has_a_column_per_row_and_the_means(tmp_path, paper_csv,
                                                  run_script):
  a = _write_results(tmp_path / 'a.json', 30.0)
  b = _write_results(tmp_path / 'b.json', 32.0)
  result = run_script('results_table.py', [
      f'--rows=mine={a},theirs={b}', f'--paper_table={paper_csv}',
      '--datasets=set5', '--scales=2,4'])
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[0] == ('| dataset | scale | mine | theirs | bicubic (paper) '
                      '| vdsr (paper) |')
  assert lines[2] == ('| set5 | x2 | 30.00 / 0.9000 | 32.00 / 0.9000 '
                      '| 33.66 / 0.9299 | 37.53 / 0.9587 |')
  assert lines[-1] == '| mean PSNR | all | 30.00 | 32.00 | 31.04 | 34.44 |'


def test_a_missing_cell_makes_the_mean_na(tmp_path, paper_csv, run_script):
  a = _write_results(tmp_path / 'a.json', 30.0)
  result = run_script('results_table.py', [
      f'--rows=mine={a}', f'--paper_table={paper_csv}', '--datasets=set5',
      '--scales=2,3,4'])
  assert result.returncode == 0, result.stderr
  assert '| set5 | x3 | n/a |' in result.stdout
  assert result.stdout.strip().splitlines()[-1].startswith(
      '| mean PSNR | all | n/a |')


@pytest.mark.parametrize('rows,expected', [
    ('{a}', 'LABEL=PATH'),
    ('=x', 'LABEL=PATH'),
    ('mine=', 'LABEL=PATH'),
    ('mine={a},mine={a}', "names 'mine' twice"),
    ('mine={missing}', 'cannot read'),
    ('mine={bad}', 'cannot read'),
    ('mine={not_a_table}', 'not what evaluate.py --json_out writes'),
])
def test_bad_rows_give_one_clear_error(tmp_path, paper_csv, run_script, rows,
                                       expected):
  a = _write_results(tmp_path / 'a.json', 30.0)
  (tmp_path / 'bad.json').write_text('{not json')
  (tmp_path / 'list.json').write_text('[1, 2]')
  rows = rows.format(a=a, missing=tmp_path / 'nope.json',
                     bad=tmp_path / 'bad.json',
                     not_a_table=tmp_path / 'list.json')
  result = run_script('results_table.py', [f'--rows={rows}',
                                           f'--paper_table={paper_csv}'])
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  assert expected in result.stderr
  assert result.stdout == ''
