"""Tests of experiments/average_weights.py, run as a user would."""

import numpy as np

from vdsr_jax import weights


def _save(path, params):
  weights.save_npz(params, path)
  return params


def test_writes_the_mean_of_its_inputs(tmp_path, run_script, tiny_params):
  a = _save(tmp_path / 'a.npz', tiny_params(0))
  b = _save(tmp_path / 'b.npz', tiny_params(1))
  out = tmp_path / 'avg.npz'
  result = run_script('average_weights.py', [
      f'--weights={tmp_path / "a.npz"},{tmp_path / "b.npz"}',
      '--coefficients=1,3', f'--out={out}'])
  assert result.returncode == 0, result.stderr
  averaged = weights.load_params(out)  # checksummed: a complete file
  for layer in a:
    np.testing.assert_allclose(
        averaged[layer]['kernel'],
        0.25 * a[layer]['kernel'] + 0.75 * b[layer]['kernel'],
        rtol=1e-6, atol=1e-7)


def test_bad_input_is_one_error_and_writes_nothing(tmp_path, run_script,
                                                  tiny_params):
  _save(tmp_path / 'a.npz', tiny_params(0))
  _save(tmp_path / 'wide.npz', tiny_params(1, features=8))
  out = tmp_path / 'avg.npz'
  cases = [
      ([f'--weights={tmp_path / "a.npz"},{tmp_path / "wide.npz"}'],
       'Cannot average'),
      ([f'--weights={tmp_path / "a.npz"},{tmp_path / "missing.npz"}'],
       'No such weights file'),
      ([f'--weights={tmp_path / "a.npz"}'], 'at least two'),
      ([f'--weights={tmp_path / "a.npz"},{tmp_path / "a.npz"}',
        '--coefficients=1,x'], 'must be numbers'),
  ]
  for args, message in cases:
    result = run_script('average_weights.py', [*args, f'--out={out}'])
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert 'Traceback' not in result.stderr
  result = run_script('average_weights.py', [
      f'--weights={tmp_path / "a.npz"},{tmp_path / "a.npz"}',
      f'--out={tmp_path / "avg.h5"}'])
  assert result.returncode != 0 and '.npz' in result.stderr
  assert not list(tmp_path.glob('avg*'))
