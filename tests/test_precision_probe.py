"""Tests of experiments/precision_probe.py (emulated TF32/bf16 convolutions)."""

import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from vdsr_jax import evaluation
from vdsr_jax import inference
from vdsr_jax import models
from vdsr_jax import weights

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] /
                       'experiments'))
import precision_probe  # pylint: disable=g-import-not-at-top,wrong-import-position
from test_train import synthetic_images  # pylint: disable=g-import-not-at-top,wrong-import-position


def _tiny_params(seed=0):
  model = models.VDSR(depth=3, features=8)
  params = models.init_params(jax.random.PRNGKey(seed), model, 17)
  # Non-zero biases, so that the probe's forward must add them.
  return jax.tree.map(
      np.asarray, {name: {'kernel': layer['kernel'],
                          'bias': layer['bias'] + 0.01 * (i + 1)}
                   for i, (name, layer) in enumerate(sorted(params.items()))})


def test_float32_width_is_the_package_forward_and_fewer_bits_round():
  params = _tiny_params()
  x = np.random.default_rng(0).uniform(size=(2, 19, 23, 1)).astype(np.float32)
  reference = np.asarray(inference.network_forward(params, x, bucket=None))
  full = np.asarray(precision_probe.rounded_forward(23)(params, x))
  np.testing.assert_allclose(full, reference, atol=2e-6)
  bf16 = np.asarray(precision_probe.rounded_forward(7)(params, x))
  error = np.abs(bf16 - reference).max()
  assert 1e-4 < error < 0.05  # rounded, but still the same network
  with pytest.raises(ValueError, match='mantissa_bits'):
    precision_probe.rounded_forward(24)


def test_evaluate_scores_with_a_given_forward():
  params = _tiny_params()
  images = {'set5': synthetic_images(n=2, height=36, width=42, seed=3)}
  plain = evaluation.evaluate('vdsr', params, ['set5'], [2, 3],
                              progress=False, images=images, bucket=None)
  same = evaluation.evaluate('vdsr', params, ['set5'], [2, 3],
                             progress=False, images=images,
                             forward=precision_probe.rounded_forward(23))
  for s in ('2', '3'):
    for metric in ('psnr', 'ssim'):
      assert same['set5'][s][metric] == pytest.approx(
          plain['set5'][s][metric], abs=1e-4)
  # The given forward is what runs: a network that returns its input
  # scores as bicubic does.
  bicubic = evaluation.evaluate('bicubic', None, ['set5'], [2, 3],
                                progress=False, images=images)
  identity = evaluation.evaluate('vdsr', params, ['set5'], [2, 3],
                                 progress=False, images=images,
                                 forward=lambda p, x: x)
  assert identity == bicubic


def test_script_prints_and_writes_a_column_per_width(tmp_path, run_script,
                                                     datasets_dir):
  path = tmp_path / 'tiny.npz'
  weights.save_npz(_tiny_params(), path)
  out = tmp_path / 'probe.json'
  result = run_script('precision_probe.py', [
      f'--weights=tiny={path}', '--datasets=set5', '--scales=2',
      '--mantissa_bits=23,7', f'--json_out={out}'],
      env={'VDSR_DATA_DIR': str(datasets_dir)}, timeout=600)
  assert result.returncode == 0, result.stderr
  assert 'tiny          7 bits - 23 bits:' in result.stdout
  scores = json.loads(out.read_text())
  assert set(scores['tiny']) == {'23', '7'}
  assert np.isfinite(scores['tiny']['7']['set5']['2']['psnr'])
  # 23 bits is evaluate.py's own forward.
  reference = evaluation.evaluate(
      'vdsr', weights.load_npz(path), ['set5'], [2], progress=False,
      data_dir=datasets_dir)
  assert scores['tiny']['23']['set5']['2']['psnr'] == pytest.approx(
      reference['set5']['2']['psnr'], abs=1e-3)


def test_script_rejects_a_name_given_twice(tmp_path, run_script):
  path = tmp_path / 'tiny.npz'
  weights.save_npz(_tiny_params(), path)
  out = tmp_path / 'probe.json'
  result = run_script('precision_probe.py', [
      f'--weights=tiny={path},tiny={path}', f'--json_out={out}'])
  assert result.returncode != 0
  assert "--weights names 'tiny' twice" in result.stderr
  assert 'Traceback' not in result.stderr
  assert not out.exists()
