"""Tests of the VDSR module."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdsr_jax import inference
from vdsr_jax import models


def test_paper_model_has_665921_parameters():
  params = models.init_params(jax.random.PRNGKey(0), models.VDSR(), 9)
  assert models.count_params(params) == 665_921
  assert len(params) == 20
  assert params['conv0']['kernel'].shape == (3, 3, 1, 64)
  assert params['conv19']['kernel'].shape == (3, 3, 64, 1)
  assert all(np.all(p['bias'] == 0) for p in params.values())


def test_he_normal_init_std():
  params = models.init_params(jax.random.PRNGKey(1), models.VDSR(), 9)
  k = np.asarray(params['conv5']['kernel'])
  np.testing.assert_allclose(k.std(), np.sqrt(2 / (9 * 64)), rtol=0.05)


@pytest.mark.parametrize('depth,features', [(5, 8), (3, 4)])
def test_depth_and_features_are_options(depth, features):
  model = models.VDSR(depth=depth, features=features)
  params = models.init_params(jax.random.PRNGKey(0), model, 9)
  assert len(params) == depth
  x = jnp.ones((2, 13, 11, 1))
  assert model.apply({'params': params}, x).shape == (2, 13, 11, 1)
  rebuilt = models.model_from_params(params)
  assert (rebuilt.depth, rebuilt.features) == (depth, features)


def test_residual_flag():
  rng = jax.random.PRNGKey(0)
  x = jax.random.uniform(rng, (1, 12, 12, 1))
  res = models.VDSR(depth=3, features=4, residual=True)
  plain = models.VDSR(depth=3, features=4, residual=False)
  params = models.init_params(rng, res, 12)
  out_res = res.apply({'params': params}, x)
  out_plain = plain.apply({'params': params}, x)
  np.testing.assert_allclose(out_res, out_plain + x, atol=1e-6)
  # A zero last layer makes the residual model the identity.
  params['conv2'] = jax.tree_util.tree_map(jnp.zeros_like, params['conv2'])
  np.testing.assert_allclose(res.apply({'params': params}, x), x, atol=0)


def test_zero_padding_keeps_size_and_is_zero():
  # One layer with an all-ones kernel sums the 3x3 neighbourhood, so the
  # corner sees 4 pixels of a constant image (zero padding), the middle 9.
  model = models.VDSR(depth=2, features=1, residual=False)
  params = models.init_params(jax.random.PRNGKey(0), model, 5)
  params = jax.tree_util.tree_map(jnp.ones_like, params)
  params['conv0']['bias'] = jnp.zeros_like(params['conv0']['bias'])
  params['conv1']['bias'] = jnp.zeros_like(params['conv1']['bias'])
  params['conv1']['kernel'] = jnp.zeros((3, 3, 1, 1)).at[1, 1].set(1.0)
  out = model.apply({'params': params}, jnp.ones((1, 5, 5, 1)))
  assert out[0, 0, 0, 0] == 4 and out[0, 2, 2, 0] == 9 and out[0, 0, 2, 0] == 6


def test_masked_padding_changes_no_output_pixel():
  model = models.VDSR(depth=4, features=8)
  params = models.init_params(jax.random.PRNGKey(3), model, 9)
  # Non-zero biases, so unmasked padding would leak into the border.
  params = jax.tree_util.tree_map(lambda p: p + 0.1, params)
  x = jax.random.uniform(jax.random.PRNGKey(4), (1, 19, 23, 1))
  ref = inference.network_forward(params, x, bucket=None)
  padded = inference.network_forward(params, x, bucket=16)
  assert padded.shape == ref.shape
  # Equal up to float32 rounding (outputs here are ~100-200; oneDNN may
  # block the sums differently for the two widths).
  np.testing.assert_allclose(padded, ref, rtol=1e-6, atol=1e-6)
  # Without the mask the border would differ: the mask is what matters.
  xp = jnp.pad(x, ((0, 0), (0, 13), (0, 9), (0, 0)))
  leaky = model.apply({'params': params}, xp)[:, :19, :23]
  assert np.abs(np.asarray(leaky - ref)).max() > 1.0


def test_bucket_sized_image_runs_unpadded_and_unmasked():
  model = models.VDSR(depth=3, features=8)
  params = models.init_params(jax.random.PRNGKey(7), model, 9)
  x = jax.random.uniform(jax.random.PRNGKey(8), (1, 32, 48, 1))
  # pylint: disable=protected-access
  inference._compiled_forward.cache_clear()
  forward = inference._compiled_forward(3, 8, True, 'float32')
  plain = inference.network_forward(params, x, bucket=None)
  bucketed = inference.network_forward(params, x, bucket=16)
  # The very same program as no bucket at all (no second compilation).
  assert forward._cache_size() == 1
  np.testing.assert_array_equal(bucketed, plain)
  # The masked program, with the image filling its bucket, agrees to rounding.
  masked = forward(params, x, np.array([32, 48], np.int32))
  np.testing.assert_allclose(masked, plain, rtol=1e-6, atol=1e-6)


def test_bfloat16_forward_is_close_to_float32():
  model = models.VDSR(depth=4, features=8)
  params = models.init_params(jax.random.PRNGKey(5), model, 9)
  x = jax.random.uniform(jax.random.PRNGKey(6), (1, 19, 23, 1))
  ref = inference.network_forward(params, x)
  half = inference.network_forward(params, x, dtype=jnp.bfloat16)
  assert half.dtype == jnp.float32 and half.shape == ref.shape
  residual = np.asarray(ref - x)
  error = np.asarray(half - ref)
  # bf16 keeps 8 significant bits: the residual is off by ~1%, not more.
  assert 0 < np.abs(error).max() < 0.05 * np.abs(residual).max()


def test_wrong_input_shape():
  model = models.VDSR(depth=3, features=4)
  params = models.init_params(jax.random.PRNGKey(0), model, 9)
  with pytest.raises(ValueError, match='N, H, W, 1'):
    model.apply({'params': params}, jnp.ones((1, 9, 9, 3)))


def test_dead_channels_counts_channels_that_never_pass_the_relu():
  model = models.VDSR(depth=4, features=8)
  params = models.init_params(jax.random.PRNGKey(7), model, 9)
  x = jax.random.uniform(jax.random.PRNGKey(8), (2, 11, 11, 1))
  before = models.dead_channels(model, params, [x])
  assert len(before) == 3  # conv0, conv1, conv2: the layers with a ReLU
  # Kill channels 1 and 5 of conv1 with a large negative bias, and channel 0
  # of conv0 (inputs are >= 0, so a non-positive filter and bias do it).
  params = jax.tree_util.tree_map(lambda p: p, params)
  params['conv1']['bias'] = params['conv1']['bias'].at[jnp.array([1, 5])].set(
      -1e3)
  params['conv0']['kernel'] = params['conv0']['kernel'].at[..., 0].set(
      -jnp.abs(params['conv0']['kernel'][..., 0]))
  params['conv0']['bias'] = params['conv0']['bias'].at[0].set(-0.1)
  after = models.dead_channels(model, params, [x, x * 0.5])
  assert after[0] == before[0] + 1 and after[1] >= before[1] + 2, (before,
                                                                    after)
  with pytest.raises(ValueError, match='at least one'):
    models.dead_channels(model, params, [])


def test_fan_out_init_changes_only_the_first_and_last_layers():
  key = jax.random.PRNGKey(1)
  fan_in = models.init_params(key, models.VDSR(), 9)
  fan_out = models.init_params(key, models.VDSR(init_fan='fan_out'), 9)
  for i in range(1, 19):  # 64 -> 64: fan_in == fan_out
    np.testing.assert_array_equal(fan_out[f'conv{i}']['kernel'],
                                  fan_in[f'conv{i}']['kernel'])
  # N(0, 2 / (9 * out_channels)): first layer 64 outputs, last layer 1.
  first = np.asarray(fan_out['conv0']['kernel'])
  last = np.asarray(fan_out['conv19']['kernel'])
  np.testing.assert_allclose(first.std(), np.sqrt(2 / (9 * 64)), rtol=0.1)
  np.testing.assert_allclose(last.std(), np.sqrt(2 / 9), rtol=0.1)
  np.testing.assert_allclose(np.asarray(fan_in['conv0']['kernel']).std(),
                             np.sqrt(2 / 9), rtol=0.1)
  with pytest.raises(ValueError, match='init_fan'):
    models.init_params(key, models.VDSR(init_fan='fan_avg'), 9)


def test_output_init_scale_scales_only_the_last_kernel():
  key = jax.random.PRNGKey(9)
  x = jax.random.uniform(jax.random.PRNGKey(10), (1, 9, 9, 1))
  he = models.init_params(key, models.VDSR(depth=4, features=8), 9)
  for scale in (0.0, 0.1, 1.0):
    model = models.VDSR(depth=4, features=8, output_init_scale=scale)
    params = models.init_params(key, model, 9)
    for layer in ('conv0', 'conv1', 'conv2'):  # untouched
      np.testing.assert_array_equal(params[layer]['kernel'],
                                    he[layer]['kernel'])
    np.testing.assert_allclose(params['conv3']['kernel'],
                               scale * he['conv3']['kernel'], rtol=1e-6)
  # Zero: the untrained residual network returns its input exactly.
  zero = models.VDSR(depth=4, features=8, output_init_scale=0.0)
  out = zero.apply({'params': models.init_params(key, zero, 9)}, x)
  np.testing.assert_array_equal(out, x)
