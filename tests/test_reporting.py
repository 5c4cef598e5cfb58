"""Tests for vdsr_jax.reporting: curves, summary and phase tables, named paths."""

import json
import pathlib
import subprocess
import sys

from PIL import Image
import pytest

from vdsr_jax import reporting


def _train_records_at(steps):
  return [{'kind': 'train', 'step': s, 'loss': 1e-2 / s, 'lr': 0.1}
          for s in steps]


def _eval_record(step, x2, x3):
  return {'kind': 'eval', 'step': step,
          'psnr': {'set5/x2': x2, 'set5/x3': x3}}


def test_curves_of_a_run_without_evaluations_have_the_loss_panel_only(
    tmp_path):
  """An unevaluated run's figure is one panel wide, not a blank PSNR beside."""
  only_loss = tmp_path / 'loss.png'
  both = tmp_path / 'both.png'
  records = _train_records_at([100, 200, 300])
  reporting.plot_curves(records, only_loss, {'set5/x2': 37.53})
  reporting.plot_curves(records + [_eval_record(300, 36.0, 32.0)], both,
                        {'set5/x2': 37.53})
  with Image.open(only_loss) as a, Image.open(both) as b:
    assert a.height == b.height
    assert a.width * 2 == b.width


def test_summary_table_has_a_row_per_evaluation_and_the_paper_row():
  records = (_train_records_at([100, 200]) + [_eval_record(200, 36.1, 32.2)] +
             _train_records_at([300]) + [_eval_record(300, 36.5, 32.6)])
  lines = reporting.summary_table(records, {'set5/x2': 37.53}).splitlines()
  assert lines[0].split() == ['step', 'loss', 'set5/x2', 'set5/x3']
  assert lines[2].split() == ['200', '5.000e-05', '36.100', '32.200']
  assert lines[3].split() == ['300', '3.333e-05', '36.500', '32.600']
  assert lines[4].split() == ['paper', '37.53', '-']


def test_summary_table_of_an_unevaluated_run_shows_its_last_loss():
  lines = reporting.summary_table(_train_records_at([100, 250])).splitlines()
  assert lines[0].split() == ['step', 'loss']
  assert lines[-1].split() == ['250', '4.000e-05']


def test_phase_table_has_a_row_per_learning_rate_with_its_first_and_last_loss():
  def rec(step, loss, lr):
    return {'kind': 'train', 'step': step, 'loss': loss, 'lr': lr}
  records = ([rec(s, 1e-2 - s * 1e-6, 0.1) for s in range(100, 1001, 100)]
             + [_eval_record(1000, 36.0, 32.0)]
             # 0.01 as the float32 the records hold; a repeated step (a
             # resume) counts once, with its later loss.
             + [rec(s, 5e-3, 0.010000000707805157) for s in (1100, 1200)]
             + [rec(1200, 4e-3, 0.01), rec(1300, 4e-3, 0.01)]
             + [rec(1400, 3e-3, 0.001)])
  lines = reporting.phase_table(records, window=300).splitlines()
  assert lines[0].split() == ['steps', 'lr', 'records', 'loss', 'first',
                              '300', 'loss', 'last', '300', 'change']
  rows = [line.split() for line in lines[2:]]
  # lr 0.1: steps 100-300 average 9.8e-3, steps 800-1000 9.1e-3.
  assert rows[0] == ['0-1000', '0.1', '10', '9.8000e-03', '9.1000e-03',
                     '-7.1%']
  assert rows[1] == ['1000-1300', '0.01', '3', '4.3333e-03', '4.3333e-03',
                     '0.0%']
  assert rows[2] == ['1300-1400', '0.001', '1', '3.0000e-03', '3.0000e-03',
                     '0.0%']
  assert len(rows) == 3
  # Records without an lr form one phase, not one each.
  no_lr = [{'kind': 'train', 'step': s, 'loss': 1e-3} for s in (10, 20, 30)]
  rows = reporting.phase_table(no_lr, window=10).splitlines()[2:]
  assert [row.split() for row in rows] == [
      ['0-30', '-', '3', '1.0000e-03', '1.0000e-03', '0.0%']]


def test_plot_curves_script_draws_and_prints_both_tables(tmp_path):
  records = _train_records_at([100, 200]) + [_eval_record(200, 36.1, 32.2)]
  (tmp_path / reporting.METRICS_FILE).write_text(
      ''.join(json.dumps(r) + '\n' for r in records))
  script = pathlib.Path(__file__).resolve().parents[1] / 'experiments' / (
      'plot_curves.py')
  done = subprocess.run(
      [sys.executable, str(script), f'--workdir={tmp_path}', '--window=100'],
      capture_output=True, text=True, check=False, timeout=300)
  assert done.returncode == 0, done.stderr
  assert '36.100' in done.stdout  # the evaluations' table
  assert '0-200' in done.stdout and 'loss last 100' in done.stdout  # phases
  with Image.open(tmp_path / reporting.CURVES_FILE) as png:
    assert png.width > 0


def test_named_paths_keeps_order_and_rejects_bad_or_repeated_names():
  assert list(reporting.named_paths(['b=x.npz', 'a=y=z.npz'], 'weights')
              .items()) == [('b', 'x.npz'), ('a', 'y=z.npz')]
  for bad in (['x.npz'], ['=x.npz'], ['b=']):
    with pytest.raises(ValueError, match=r'--weights takes NAME=PATH pairs'):
      reporting.named_paths(bad, 'weights')
  with pytest.raises(ValueError, match=r"--rows names 'b' twice"):
    reporting.named_paths(['b=x.json', 'b=y.json'], 'rows', 'LABEL')


def test_cpu_info_reads_the_first_model_name_and_the_simd_flags(tmp_path):
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text(
      'processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\n'
      'flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n\n'
      'processor\t: 1\nmodel name\t: Another\nflags\t\t: fpu\n')
  info = reporting.cpu_info(cpuinfo)
  assert info['cpu_model'] == 'Example CPU @ 2.0GHz'
  assert info['cpu_simd'] == ['avx2', 'fma', 'avx512f']
  assert isinstance(info['cpu_count'], int) and info['cpu_count'] >= 1
  # Without the file (outside Linux) the record still has its keys.
  missing = reporting.cpu_info(tmp_path / 'absent')
  assert missing['cpu_model'] is None and missing['cpu_simd'] == []
  assert missing['cpu_count'] == info['cpu_count']
