"""The VDSR network (Kim, Lee & Lee, CVPR 2016) as a Flax linen module."""

from typing import Any, Iterable, List, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdsr_jax import conv

# He et al. (2015) initialisation, N(0, 2 / fan), over fan_in
# (3 * 3 * in_channels, the paper's) or fan_out
# (3 * 3 * out_channels, the PyTorch port's): they differ only in the first
# layer (1 -> 64: std 0.47 or 0.059) and the last (64 -> 1: 0.059 or 0.47).
INIT_FANS = ('fan_in', 'fan_out')


def _scaled_he(scale: float, fan: str = 'fan_in'):
  """He's initialiser over `fan` with its standard deviation times `scale`."""
  if scale == 0.0:
    return nn.initializers.zeros
  return nn.initializers.variance_scaling(2.0 * scale * scale, fan, 'normal')


class VDSR(nn.Module):
  """`depth` 3x3 convolutions with ReLU between them, predicting a residual.

  Input and output are luminance images (N, H, W, 1) with values in [0, 1];
  the input is the bicubic-upscaled low-resolution image. Every convolution
  zero-pads to keep the size. With `residual=True` the output is
  `x + net(x)`, otherwise `net(x)` (the paper's non-residual baseline).

  Attributes:
    depth: number of weight layers (the paper uses 20; it studies 5..20).
    features: filters of the hidden layers (64 in the paper).
    residual: add the input to the network's output.
    dtype: computation dtype (e.g. bfloat16 for mixed precision); parameters
      stay float32 and the output is float32.
    output_init_scale: the last layer's initial kernel is He's times this;
      0 starts it at zero, so the untrained network outputs its input
      (bicubic) instead of a large random residual. Initialisation only.
    init_fan: 'fan_in' (the paper's He initialisation) or 'fan_out' (the
      PyTorch port's); see INIT_FANS. Initialisation only.
  """
  depth: int = 20
  features: int = 64
  residual: bool = True
  dtype: Any = jnp.float32
  output_init_scale: float = 1.0
  init_fan: str = 'fan_in'

  @nn.compact
  def __call__(self, x: jax.Array,
               mask: Optional[jax.Array] = None) -> jax.Array:
    """Runs the network.

    Args:
      x: (N, H, W, 1) float images.
      mask: optional (N, H, W, 1) array, 1 inside the true image and 0 in
        padding added to reach a shape bucket. Zeroing the activations there
        after every layer makes each convolution see zeros beyond the true
        border, exactly as with no padding, so padding changes no output
        pixel inside the mask. A constant: no gradient flows to it.

    Returns:
      (N, H, W, 1) float32 images.
    """
    if self.depth < 2:
      raise ValueError(f'VDSR depth must be >= 2, got {self.depth}.')
    if self.init_fan not in INIT_FANS:
      raise ValueError(f'VDSR init_fan must be one of {INIT_FANS}, got '
                       f'{self.init_fan!r}.')
    if x.ndim != 4 or x.shape[-1] != 1:
      raise ValueError('VDSR expects luminance batches of shape (N, H, W, 1); '
                       f'got {x.shape}.')
    h = x.astype(self.dtype)
    if mask is not None:
      mask = mask.astype(self.dtype)
    for i in range(self.depth):
      last = i == self.depth - 1
      # Same parameters and result as nn.Conv(features, (3, 3), 'SAME') and
      # a ReLU, by the fastest convolution for the backend (see conv.py).
      h = conv.Conv3x3(
          features=1 if last else self.features,
          kernel_init=_scaled_he(self.output_init_scale if last else 1.0,
                                 self.init_fan),
          bias_init=nn.initializers.zeros,
          dtype=self.dtype,
          relu=not last,
          name=f'conv{i}')(h, None if last else mask)
    h = h.astype(jnp.float32)
    return x.astype(jnp.float32) + h if self.residual else h


def init_params(rng: jax.Array, model: VDSR, patch_size: int = 41) -> Any:
  """Initialises the model's parameters (the 'params' collection)."""
  dummy = jnp.zeros((1, patch_size, patch_size, 1), jnp.float32)
  return model.init(rng, dummy)['params']


def count_params(params: Any) -> int:
  """Total number of scalars in a parameter tree."""
  return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))


def model_from_params(params: Any, residual: bool = True, **kwargs) -> VDSR:
  """Builds the VDSR module whose depth and width match `params`."""
  names = [k for k in params if k.startswith('conv')]
  depth = len(names)
  expected = {f'conv{i}' for i in range(depth)}
  if depth < 2 or set(names) != expected:
    raise ValueError('Parameters do not look like VDSR: expected layers '
                     f"conv0..conv{{depth-1}}, got {sorted(params)}.")
  features = int(params['conv0']['kernel'].shape[-1])
  return VDSR(depth=depth, features=features, residual=residual, **kwargs)


def dead_channels(model: VDSR, params: Any, inputs: Iterable[Any]) -> List[int]:
  """Per hidden layer, the channels whose ReLU output is 0 on all `inputs`.

  A channel that never passes its ReLU gets no gradient and stays dead: its
  filters are lost capacity. Training at a high learning rate can kill
  channels early; this counts them (a diagnostic, e.g. for clipping).

  Args:
    model: the VDSR module.
    params: its parameters.
    inputs: batches of (N, H, W, 1) network inputs.

  Returns:
    One count per hidden layer conv0 .. conv{depth-2}.
  """
  peaks = None
  for x in inputs:
    _, state = model.apply({'params': params}, jnp.asarray(x, jnp.float32),
                           capture_intermediates=True)
    layers = state['intermediates']
    # Hidden layers end in their ReLU, so an output > 0 means it passed.
    batch_peaks = [jnp.max(layers[f'conv{i}']['__call__'][0], axis=(0, 1, 2))
                   for i in range(model.depth - 1)]
    peaks = batch_peaks if peaks is None else [
        jnp.maximum(a, b) for a, b in zip(peaks, batch_peaks)]
  if peaks is None:
    raise ValueError('dead_channels needs at least one input batch.')
  return [int(jnp.sum(p <= 0)) for p in peaks]
