"""Tests for vdsr_jax.optimizers: schedule, adjustable clipping, the chain."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vdsr_jax import optimizers


def _run(tx, params, grads_per_step):
  """Applies `tx` to each gradient in turn; returns updates and params."""
  state = tx.init(params)
  out = []
  for grads in grads_per_step:
    updates, state = jax.jit(tx.update)(grads, state, params)
    out.append(jax.tree.map(np.asarray, updates))
    params = optax.apply_updates(params, updates)
  return out, params


def test_paper_boundaries():
  assert optimizers.decay_boundaries(9960) == (2490, 4980, 7470)
  assert optimizers.decay_boundaries(3500, decay_every=1000) == (1000, 2000,
                                                                3000)
  assert optimizers.decay_boundaries(100, 10, boundaries=(70, 30)) == (30, 70)
  assert optimizers.decay_boundaries(3) == (1, 2)


@pytest.mark.parametrize('step,lr', [(0, 0.1), (2489, 0.1), (2490, 0.01),
                                     (4979, 0.01), (4980, 1e-3), (7469, 1e-3),
                                     (7470, 1e-4), (9959, 1e-4)])
def test_schedule_values(step, lr):
  schedule = optimizers.step_decay_schedule(
      0.1, optimizers.decay_boundaries(9960), 0.1)
  np.testing.assert_allclose(float(jax.jit(schedule)(step)), lr, rtol=1e-6)


def test_global_norm_clip_threshold_follows_schedule():
  # lr 0.1 for steps 0, 1 then 0.01: threshold 0.4 / lr = 4, 4, 40.
  schedule = optimizers.step_decay_schedule(0.1, [2], 0.1)
  tx = optimizers.adjustable_clip(0.4, schedule, 'global_norm')
  params = {'a': jnp.zeros(2), 'b': jnp.zeros(1)}
  big = {'a': jnp.array([6.0, 0.0]), 'b': jnp.array([8.0])}  # norm 10
  small = {'a': jnp.array([0.3, 0.0]), 'b': jnp.array([0.4])}  # norm 0.5
  out, _ = _run(tx, params, [big, small, big])
  np.testing.assert_allclose(out[0]['a'], [2.4, 0.0], rtol=1e-6)  # 10 -> 4
  np.testing.assert_allclose(out[0]['b'], [3.2], rtol=1e-6)
  np.testing.assert_allclose(out[1]['a'], [0.3, 0.0], rtol=1e-6)  # untouched
  np.testing.assert_allclose(out[2]['a'], [6.0, 0.0], rtol=1e-6)  # 10 < 40
  np.testing.assert_allclose(out[2]['b'], [8.0], rtol=1e-6)


def test_fixed_clip_threshold_ignores_schedule():
  # Fixed threshold 4 whatever the rate; same state as the adjustable one.
  schedule = optimizers.step_decay_schedule(0.1, [2], 0.1)
  tx = optimizers.adjustable_clip(4.0, schedule, 'global_norm',
                                  adjustable=False)
  params = {'a': jnp.zeros(2), 'b': jnp.zeros(1)}
  big = {'a': jnp.array([6.0, 0.0]), 'b': jnp.array([8.0])}  # norm 10
  out, _ = _run(tx, params, [big, big, big])
  for o in out:  # 10 -> 4 at lr 0.1 and at lr 0.01
    np.testing.assert_allclose(o['a'], [2.4, 0.0], rtol=1e-6)
    np.testing.assert_allclose(o['b'], [3.2], rtol=1e-6)
  adjustable = optimizers.adjustable_clip(0.4, schedule, 'global_norm')
  assert (jax.tree.structure(tx.init(params)) ==
          jax.tree.structure(adjustable.init(params)))


def test_value_clip_threshold_follows_schedule():
  schedule = optimizers.step_decay_schedule(0.1, [1], 0.1)
  tx = optimizers.adjustable_clip(0.4, schedule, 'value')
  params = {'a': jnp.zeros(4)}
  g = {'a': jnp.array([-50.0, 5.0, 3.0, -0.5])}
  out, _ = _run(tx, params, [g, g])
  np.testing.assert_allclose(out[0]['a'], [-4.0, 4.0, 3.0, -0.5], rtol=1e-6)
  np.testing.assert_allclose(out[1]['a'], [-40.0, 5.0, 3.0, -0.5], rtol=1e-6)


def test_clip_keeps_nonfinite_visible():
  schedule = optimizers.step_decay_schedule(0.1, [], 0.1)
  tx = optimizers.adjustable_clip(0.4, schedule, 'global_norm')
  out, _ = _run(tx, {'a': jnp.zeros(2)}, [{'a': jnp.array([jnp.nan, 1.0])}])
  assert not np.isfinite(out[0]['a']).all()


def test_weight_decay_mask():
  params = {'conv0': {'kernel': jnp.ones((1,)), 'bias': jnp.ones((1,))}}
  assert optimizers.decay_mask(params) == {'conv0': {'kernel': True,
                                                     'bias': False}}
  assert optimizers.decay_mask(params, True) == {'conv0': {'kernel': True,
                                                           'bias': True}}
  tx, _ = optimizers.create(learning_rate=1.0, total_steps=10, boundaries=(99,),
                            momentum=0.0, weight_decay=0.5, clip_mode='none')
  zero = jax.tree.map(jnp.zeros_like, params)
  out, _ = _run(tx, params, [zero])
  np.testing.assert_allclose(out[0]['conv0']['kernel'], [-0.5])  # -lr*wd*w
  np.testing.assert_allclose(out[0]['conv0']['bias'], [0.0])


def test_chain_two_steps_by_hand():
  """clip (global norm, theta/lr) -> + wd * kernel -> v = m v - lr g."""
  theta, wd, m = 0.4, 1e-4, 0.9
  tx, schedule = optimizers.create(
      learning_rate=0.1, total_steps=10, boundaries=(1,), decay_factor=0.1,
      momentum=m, weight_decay=wd, clip_mode='global_norm', clip_theta=theta)
  params = {'conv0': {'kernel': jnp.array([1.0, -2.0]),
                      'bias': jnp.array([0.5])}}
  g1 = {'conv0': {'kernel': jnp.array([30.0, 40.0]), 'bias': jnp.array([0.0])}}
  g2 = {'conv0': {'kernel': jnp.array([3.0, -4.0]), 'bias': jnp.array([12.0])}}
  _, new_params = _run(tx, params, [g1, g2])

  # Step 0: lr 0.1, threshold 4; ||g1|| = 50 -> scaled by 4/50.
  w, b = np.array([1.0, -2.0]), np.array([0.5])
  gw = np.array([30.0, 40.0]) * (4.0 / 50.0) + wd * w
  gb = np.array([0.0]) * (4.0 / 50.0)
  vw, vb = -0.1 * gw, -0.1 * gb
  w, b = w + vw, b + vb
  # Step 1: lr 0.01 (boundary at 1), threshold 40; ||g2|| = 13, unclipped.
  gw = np.array([3.0, -4.0]) + wd * w
  gb = np.array([12.0])
  vw, vb = m * vw - 0.01 * gw, m * vb - 0.01 * gb
  w, b = w + vw, b + vb

  np.testing.assert_allclose(new_params['conv0']['kernel'], w, rtol=1e-6)
  np.testing.assert_allclose(new_params['conv0']['bias'], b, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(1)), 0.01, rtol=1e-6)


@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
def test_frozen_biases_stay_put_and_leave_the_clip_norm(optimizer):
  """train_biases=False: biases never move; their gradient is not clipped on."""
  tx, _ = optimizers.create(
      learning_rate=0.1, total_steps=10, optimizer=optimizer, momentum=0.9,
      weight_decay=1e-4, train_biases=False, clip_mode='global_norm',
      clip_theta=0.4, clip_adjustable=False)
  params = {'conv0': {'kernel': jnp.array([1.0, -2.0]),
                      'bias': jnp.array([0.5])}}
  # The bias gradient would dominate the norm (as the last layer's does).
  g = {'conv0': {'kernel': jnp.array([3.0, 4.0]), 'bias': jnp.array([500.0])}}
  out, new_params = _run(tx, params, [g, g, g])
  for updates in out:
    np.testing.assert_array_equal(updates['conv0']['bias'], [0.0])
  np.testing.assert_array_equal(new_params['conv0']['bias'], [0.5])
  if optimizer == 'sgd':
    # Fixed threshold 0.4 on the kernel alone (norm 5): scaled by 0.08.
    gw = np.array([3.0, 4.0]) * 0.08 + 1e-4 * np.array([1.0, -2.0])
    np.testing.assert_allclose(out[0]['conv0']['kernel'], -0.1 * gw,
                               rtol=1e-6)


def test_adam_alternative():
  tx, _ = optimizers.create(learning_rate=1e-3, total_steps=10,
                            optimizer='adam', weight_decay=0.0,
                            clip_mode='none')
  out, _ = _run(tx, {'a': jnp.zeros(2)}, [{'a': jnp.array([2.0, -0.1])}])
  np.testing.assert_allclose(out[0]['a'], [-1e-3, 1e-3], rtol=1e-4)


def test_bad_arguments():
  with pytest.raises(ValueError, match='clip_mode'):
    optimizers.create(learning_rate=0.1, total_steps=10, clip_mode='bogus')
  with pytest.raises(ValueError, match='optimizer'):
    optimizers.create(learning_rate=0.1, total_steps=10, optimizer='rmsprop')
