"""Tests for vdsr_jax.reporting: curves, summary table, named paths."""

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


def test_named_paths_keeps_order_and_rejects_bad_or_repeated_names():
  assert list(reporting.named_paths(['b=x.npz', 'a=y=z.npz'], 'weights')
              .items()) == [('b', 'x.npz'), ('a', 'y=z.npz')]
  for bad in (['x.npz'], ['=x.npz'], ['b=']):
    with pytest.raises(ValueError, match=r'--weights takes NAME=PATH pairs'):
      reporting.named_paths(bad, 'weights')
  with pytest.raises(ValueError, match=r"--rows names 'b' twice"):
    reporting.named_paths(['b=x.json', 'b=y.json'], 'rows', 'LABEL')
