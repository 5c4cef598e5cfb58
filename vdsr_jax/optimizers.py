"""The paper's optimiser as one optax chain, and its learning-rate schedule.

VDSR trains with SGD (momentum 0.9, weight decay 1e-4) at a high learning
rate, 0.1, divided by 10 every 20 of 80 epochs. What makes that rate usable is
*adjustable gradient clipping*: gradients are clipped to a threshold theta/lr
that loosens as the rate drops, so the largest step, lr * theta/lr = theta,
stays the same through training.

`create` builds, in this order (all inside one `optax.chain`, so everything
runs inside the jitted train step and its state is checkpointed with it):

  0. With `train_biases=False`, the biases' gradients are zeroed first (and
     their updates last), so they keep their initial value, zero: the
     bias-free VDSR of the public PyTorch port (twtygqyy/pytorch-vdsr), with
     the biases out of the clipping norm too.
  1. `adjustable_clip`: clips the loss gradient to theta / lr(step), either
     its global norm (`global_norm`) or each element to [-theta/lr, theta/lr]
     (`value`, the paper's wording); with `adjustable=False` at the fixed
     threshold theta (the PyTorch port: global norm 0.4 at every rate).
  2. `optax.add_decayed_weights`: adds weight_decay * w to the gradient (L2
     regularisation as SGD weight decay in Caffe and MatConvNet). It comes
     after clipping, as in Caffe (ClipGradients before Regularize) and the
     PyTorch port (clip_grad_norm_ before SGD's weight_decay), so the decay
     term is never clipped. Only kernels are decayed by default: biases are
     few and regularising them buys nothing (`decay_biases=True` changes it).
  3. SGD: `-lr(step)` then `optax.trace(momentum)`, i.e. v = m v - lr g,
     w += v: the learning rate enters *inside* the momentum buffer as in
     Caffe and MatConvNet (optax.sgd and PyTorch scale after the buffer; the
     two differ only just after a rate drop). With `optimizer='adam'`,
     `optax.scale_by_adam()` then `-lr(step)` instead.

Every schedule-aware stage keeps its own step count and calls the same
schedule function, so lr, clip threshold and step agree at every update.
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jax.Array], jax.Array]

CLIP_MODES = ('global_norm', 'value', 'none')
OPTIMIZERS = ('sgd', 'adam')


def decay_boundaries(total_steps: int, decay_every: int = 0,
                     boundaries: Sequence[int] = ()) -> tuple[int, ...]:
  """The steps at which the learning rate is divided.

  Args:
    total_steps: length of training.
    decay_every: divide every this many steps; 0: every quarter of
      `total_steps` (the paper: every 20 of 80 epochs).
    boundaries: explicit steps; when given, `decay_every` is ignored.

  Returns:
    Sorted boundaries, all in [1, total_steps).
  """
  if boundaries:
    return tuple(sorted(int(b) for b in boundaries))
  every = decay_every or max(1, round(total_steps / 4))
  return tuple(range(every, total_steps, every))


def step_decay_schedule(learning_rate: float, boundaries: Sequence[int],
                        factor: float = 0.1) -> Schedule:
  """lr(step) = learning_rate * factor ** (number of boundaries <= step).

  `step` counts updates already applied: the first update uses lr(0), and
  the update numbered `b` (0-based) is the first to use the decayed rate.
  """
  bounds = jnp.asarray(sorted(boundaries), jnp.int32)

  def schedule(step):
    passed = jnp.sum(jnp.asarray(step, jnp.int32) >= bounds)
    return jnp.asarray(learning_rate, jnp.float32) * jnp.power(
        jnp.asarray(factor, jnp.float32), passed.astype(jnp.float32))

  return schedule


class AdjustableClipState(NamedTuple):
  """Number of updates seen, to read the schedule at the current step."""
  count: jax.Array


def adjustable_clip(theta: float, schedule: Schedule,
                    mode: str = 'global_norm',
                    adjustable: bool = True) -> optax.GradientTransformation:
  """Clips updates to theta / schedule(step) (Kim et al. 2016, Sec. 3.2).

  Args:
    theta: the clip constant; the largest SGD step is lr * theta / lr = theta.
    schedule: the learning-rate schedule used by the optimiser.
    mode: 'global_norm': scale all updates by min(1, (theta/lr) / ||g||);
      'value': clip every element to [-theta/lr, theta/lr].
    adjustable: False clips at the fixed threshold theta instead (Caffe's
      `clip_gradients`), so the largest step lr * theta shrinks with every
      decay. Same state either way, so a run can change it at a boundary.

  Returns:
    An optax transformation; a non-finite gradient stays non-finite (so the
    training loop sees it and stops).
  """
  if mode not in ('global_norm', 'value'):
    raise ValueError(f"adjustable_clip mode must be 'global_norm' or 'value', "
                     f'got {mode!r}.')

  def init_fn(params):
    del params
    return AdjustableClipState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    if adjustable:
      threshold = theta / schedule(state.count)
    else:
      threshold = jnp.asarray(theta, jnp.float32)
    if mode == 'global_norm':
      norm = optax.tree.norm(updates)
      # threshold / 0 = inf -> factor 1; a NaN norm gives NaN updates.
      factor = jnp.minimum(1.0, threshold / norm)
      updates = jax.tree.map(lambda g: g * factor.astype(g.dtype), updates)
    else:
      updates = jax.tree.map(
          lambda g: jnp.clip(g, -threshold.astype(g.dtype),
                             threshold.astype(g.dtype)), updates)
    return updates, AdjustableClipState(
        count=optax.safe_int32_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def _is_bias(path, _) -> bool:
  return getattr(path[-1], 'key', None) == 'bias'


def decay_mask(params: Any, decay_biases: bool = False) -> Any:
  """True for the leaves to decay: kernels, and biases if asked."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: decay_biases or not _is_bias(path, leaf), params)


def bias_mask(params: Any) -> Any:
  """True for the biases."""
  return jax.tree_util.tree_map_with_path(_is_bias, params)


def create(*, learning_rate: float, total_steps: int, decay_every: int = 0,
           boundaries: Sequence[int] = (), decay_factor: float = 0.1,
           optimizer: str = 'sgd', momentum: float = 0.9,
           weight_decay: float = 1e-4, decay_biases: bool = False,
           train_biases: bool = True,
           clip_mode: str = 'global_norm', clip_theta: float = 0.4,
           clip_adjustable: bool = True
           ) -> tuple[optax.GradientTransformation, Schedule]:
  """Builds the training optimiser (see the module docstring).

  Returns:
    (transformation, schedule): the chain, and lr(step) for logging.
  """
  if optimizer not in OPTIMIZERS:
    raise ValueError(
        f'optimizer must be one of {OPTIMIZERS}, got {optimizer!r}.')
  if clip_mode not in CLIP_MODES:
    raise ValueError(
        f'clip_mode must be one of {CLIP_MODES}, got {clip_mode!r}.')
  schedule = step_decay_schedule(
      learning_rate, decay_boundaries(total_steps, decay_every, boundaries),
      decay_factor)
  parts = []
  if not train_biases:
    parts.append(optax.masked(optax.set_to_zero(), bias_mask))
  if clip_mode != 'none':
    parts.append(adjustable_clip(clip_theta, schedule, clip_mode,
                                 clip_adjustable))
  if weight_decay:
    parts.append(optax.add_decayed_weights(
        weight_decay, mask=lambda p: decay_mask(p, decay_biases)))
  if optimizer == 'sgd':
    parts.append(optax.scale_by_learning_rate(schedule))
    if momentum:
      parts.append(optax.trace(decay=momentum))
  else:
    parts.append(optax.scale_by_adam())
    parts.append(optax.scale_by_learning_rate(schedule))
  if not train_biases:
    parts.append(optax.masked(optax.set_to_zero(), bias_mask))
  return optax.chain(*parts), schedule
