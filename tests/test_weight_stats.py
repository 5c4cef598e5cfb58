"""Tests of experiments/weight_stats.py, run as a user would (its own Python)."""

import json

import numpy as np

from vdsr_jax import weights


def test_statistics_of_known_weights(tmp_path, run_script, tiny_params):
  init = tiny_params(0, features=8)
  # Every 3x3 kernel constant (its mean): neighbours perfectly correlated.
  smooth = {name: {'kernel': np.broadcast_to(
                       layer['kernel'].mean(axis=(0, 1), keepdims=True),
                       layer['kernel'].shape).copy(),
                   'bias': np.full_like(layer['bias'], -0.5)}
            for name, layer in init.items()}
  weights.save_npz(init, tmp_path / 'init.npz')
  weights.save_npz(smooth, tmp_path / 'smooth.npz')
  out = tmp_path / 'stats.json'
  result = run_script('weight_stats.py', [
      f'--weights=a={tmp_path / "init.npz"},b={tmp_path / "smooth.npz"}',
      '--init_seed=0', f'--json_out={out}'])
  assert result.returncode == 0, result.stderr
  assert 'neighbour_corr' in result.stdout
  stats = json.loads(out.read_text())
  assert list(stats) == ['a', 'b', 'init0']
  # The seed-0 initialisation column is the saved initialisation.
  for layer in ('conv0', 'conv1', 'conv2'):
    for key in ('norm', 'std', 'kurtosis', 'neighbour_corr'):
      np.testing.assert_allclose(stats['init0'][layer][key],
                                 stats['a'][layer][key], rtol=1e-6)
  kernel = init['conv1']['kernel']
  np.testing.assert_allclose(stats['a']['conv1']['norm'],
                             np.linalg.norm(kernel), rtol=1e-6)
  np.testing.assert_allclose(stats['a']['conv1']['std'], kernel.std(),
                             rtol=1e-6)
  # He init: Gaussian (kurtosis ~0) and uncorrelated taps (64 samples each).
  assert abs(stats['a']['conv1']['kurtosis']) < 1.0
  assert abs(stats['a']['conv1']['neighbour_corr']) < 0.35
  assert stats['a']['conv1']['bias_mean_abs'] == 0.0
  for layer in ('conv0', 'conv1', 'conv2'):
    np.testing.assert_allclose(stats['b'][layer]['neighbour_corr'], 1.0,
                               atol=1e-9)
    assert stats['b'][layer]['bias_mean_abs'] == 0.5


def test_bad_arguments_give_one_clear_error(tmp_path, run_script,
                                            tiny_params):
  shallow = tiny_params(0, features=8)
  deep = tiny_params(0, depth=4, features=8)
  weights.save_npz(shallow, tmp_path / 'd3.npz')
  weights.save_npz(deep, tmp_path / 'd4.npz')
  d3, d4 = tmp_path / 'd3.npz', tmp_path / 'd4.npz'
  result = run_script('weight_stats.py', [f'--weights={d3}'])
  assert result.returncode != 0 and 'NAME=PATH' in result.stderr
  result = run_script('weight_stats.py', [f'--weights=x={d3},x={d4}'])
  assert result.returncode != 0 and "names 'x' twice" in result.stderr
  result = run_script('weight_stats.py', [f'--weights=x={d3},y={d4}',
                                          f'--json_out={tmp_path / "no.json"}'])
  assert result.returncode != 0 and 'different depths' in result.stderr
  assert not (tmp_path / 'no.json').exists()
