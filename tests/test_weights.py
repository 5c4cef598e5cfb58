"""Tests of loading and saving weights, including the authors' .mat."""

import numpy as np
import pytest
from scipy import io as sio

from vdsr_jax import models
from vdsr_jax import weights


def test_official_mat_loads_with_expected_shapes(reference_dir):
  params = weights.load_params(reference_dir / 'VDSR_Official.mat')
  assert models.count_params(params) == 665_921
  assert params['conv0']['kernel'].shape == (3, 3, 1, 64)
  assert params['conv19']['kernel'].shape == (3, 3, 64, 1)
  assert params['conv19']['bias'].shape == (1,)
  assert params['conv5']['kernel'].dtype == np.float32


def test_wrong_mat_files_give_clear_errors(tmp_path):
  other = tmp_path / 'other.mat'
  sio.savemat(other, {'net': np.zeros(3)})
  with pytest.raises(weights.WeightsError, match='variable "model"'):
    weights.load_params(other)
  bad_shape = tmp_path / 'bad_shape.mat'
  w = np.empty((1, 3), dtype=object)
  b = np.empty((1, 3), dtype=object)
  for i, (cin, cout) in enumerate([(1, 8), (8, 8), (8, 2)]):
    w[0, i] = np.zeros((3, 3, cin, cout), np.float32)
    b[0, i] = np.zeros((cout, 1), np.float32)
  sio.savemat(bad_shape, {'model': {'weight': w, 'bias': b}})
  with pytest.raises(weights.WeightsError, match='conv2: expected kernel'):
    weights.load_params(bad_shape)
  garbage = tmp_path / 'garbage.mat'
  garbage.write_bytes(b'not a mat file at all' * 10)
  with pytest.raises(weights.WeightsError, match='not a readable'):
    weights.load_params(garbage)
  with pytest.raises(weights.WeightsError, match='No such'):
    weights.load_params(tmp_path / 'missing.mat')
  unknown = tmp_path / 'w.h5'
  unknown.write_bytes(b'x')
  with pytest.raises(weights.WeightsError, match='unknown weights format'):
    weights.load_params(unknown)


def test_npz_round_trip_and_checksum(tmp_path, tiny_params):
  params = tiny_params()
  path = tmp_path / 'w.npz'
  weights.save_npz(params, path)
  loaded = weights.load_params(path)
  for layer in params:
    for name in ('kernel', 'bias'):
      np.testing.assert_array_equal(loaded[layer][name], params[layer][name])
  # Tamper with one value: the checksum catches it.
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  arrays['conv1/kernel'] = arrays['conv1/kernel'] + 1
  np.savez(path, **arrays)
  with pytest.raises(weights.WeightsError, match='checksum'):
    weights.load_params(path)
  assert not list(tmp_path.glob('*.tmp'))


def test_check_params_rejects_wrong_structure(tiny_params):
  with pytest.raises(weights.WeightsError):
    weights.check_params({'dense': {}})
  with pytest.raises(weights.WeightsError):
    weights.check_params([1, 2])
  params = tiny_params()
  assert weights.check_params({'params': params}) is params


def test_orbax_checkpoint_by_relative_path(tmp_path, monkeypatch,
                                           tiny_params):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  params = tiny_params()
  ocp.PyTreeCheckpointer().save(tmp_path / 'run' / 'checkpoints' / '7' /
                                'state', {'params': params})
  monkeypatch.chdir(tmp_path)
  loaded = weights.load_params('run')  # a workdir given relative to the cwd
  np.testing.assert_array_equal(loaded['conv1']['kernel'],
                                params['conv1']['kernel'])


def test_shipped_weights_load_and_are_trained(datasets_dir):
  """The package's own weights: checksummed, 20 x 64, and far above bicubic."""
  from vdsr_jax import datasets  # pylint: disable=g-import-not-at-top
  from vdsr_jax import evaluation  # pylint: disable=g-import-not-at-top
  params = weights.load_pretrained()  # load_npz verifies the checksum
  assert len(params) == 20 and params['conv1']['kernel'].shape == (3, 3, 64,
                                                                    64)
  bird = datasets.read_image(datasets_dir / 'Set5' / 'bird.png')
  images = {'set5': [bird]}
  ours = evaluation.evaluate('vdsr', params, ['set5'], [2], images=images,
                             progress=False)['set5']['2']['psnr']
  bicubic = evaluation.evaluate('bicubic', None, ['set5'], [2],
                                images=images, progress=False)
  # experiments/results/vdsr_291: bird x2 is ~4.5 dB above bicubic.
  assert ours > bicubic['set5']['2']['psnr'] + 3.0, (ours, bicubic)


def test_missing_shipped_weights_is_one_clear_error(tmp_path, monkeypatch):
  monkeypatch.setattr(weights, 'PRETRAINED_PATH', tmp_path / 'none.npz')
  with pytest.raises(weights.WeightsError, match='No pretrained'):
    weights.load_pretrained()


def test_average_params_is_the_weighted_mean(tiny_params):
  a, b, c = tiny_params(0), tiny_params(1), tiny_params(2)
  mean = weights.average_params([a, b, c])
  weighted = weights.average_params([a, b], coefficients=[3, 1])
  for layer in a:
    for name in ('kernel', 'bias'):
      assert mean[layer][name].dtype == np.float32
      np.testing.assert_allclose(
          mean[layer][name], (a[layer][name] + b[layer][name]
                              + c[layer][name]) / 3, rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(
          weighted[layer][name], 0.75 * a[layer][name] + 0.25 * b[layer][name],
          rtol=1e-6, atol=1e-7)
  # One checkpoint with all the weight is that checkpoint.
  only_b = weights.average_params([a, b], coefficients=[0, 2])
  np.testing.assert_array_equal(only_b['conv1']['kernel'],
                                b['conv1']['kernel'])


def test_average_params_rejects_mismatches(tiny_params):
  a = tiny_params(0)
  with pytest.raises(weights.WeightsError, match='3 layers, params 1 has 4'):
    weights.average_params([a, tiny_params(1, depth=4)])
  with pytest.raises(weights.WeightsError, match=r'conv0/kernel, \(3, 3, 1, 4'):
    weights.average_params([a, tiny_params(1, features=8)])
  with pytest.raises(weights.WeightsError, match='2 params but 3 coefficients'):
    weights.average_params([a, a], coefficients=[1, 1, 1])
  with pytest.raises(weights.WeightsError, match='non-negative'):
    weights.average_params([a, a], coefficients=[1, -1])
  with pytest.raises(weights.WeightsError, match='non-negative'):
    weights.average_params([a, a], coefficients=[0, 0])
  with pytest.raises(weights.WeightsError, match='no params'):
    weights.average_params([])
