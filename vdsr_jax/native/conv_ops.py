"""The differentiable 3x3 convolutions built from a native backend's kernels.

Both native backends (`dnnl`, `winograd`) provide three float32 kernels,
forward (with an optional fused bias + ReLU), input gradient and weight
gradient; `make_conv3x3` wires them into `conv3x3(x, kernel)` and
`conv3x3_bias_relu(x, kernel, bias)` with custom VJPs, and checks the
arguments once, the same way for both. A backend whose forward also
multiplies a per-pixel mask in (Winograd) gets
`conv3x3_bias_relu_mask(x, kernel, bias, mask)` from
`make_conv3x3_bias_relu_mask`, with the same gradients.
"""

from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp

# forward(x, kernel, bias or None) -> relu(conv + bias), or conv if no bias.
Forward = Callable[[jax.Array, jax.Array, Optional[jax.Array]], jax.Array]
# masked_forward(x, kernel, bias, mask) -> relu(conv + bias) * mask.
MaskedForward = Callable[[jax.Array, jax.Array, jax.Array, jax.Array],
                         jax.Array]
Grad = Callable[[jax.Array, jax.Array], jax.Array]


def check_args(name: str, x: jax.Array, kernel: jax.Array,
               bias: Optional[jax.Array] = None) -> None:
  """One clear error for arguments no native kernel takes."""
  if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
    raise TypeError(f'{name} conv3x3 is float32 only, got '
                    f'{x.dtype} activations and a {kernel.dtype} kernel.')
  if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[:2] != (3, 3) or (
      x.shape[-1] != kernel.shape[2]):
    raise ValueError('Expected (N, H, W, Cin) activations and a (3, 3, Cin, '
                     f'Cout) kernel, got {x.shape} and {kernel.shape}.')
  if bias is not None and (bias.dtype != jnp.float32 or
                           bias.shape != kernel.shape[3:]):
    raise ValueError(f'Expected a float32 bias of shape {kernel.shape[3:]}, '
                     f'got {bias.dtype} {bias.shape}.')


def mask_fits(x: jax.Array, mask: jax.Array) -> bool:
  """True for a float32 (1 or N, H, W, 1) mask of (N, H, W, C) activations."""
  return (mask.dtype == jnp.float32 and mask.ndim == 4 and x.ndim == 4
          and mask.shape[0] in (1, x.shape[0])
          and mask.shape[1:3] == x.shape[1:3] and mask.shape[3] == 1)


def _bias_relu_grads(input_grad: Grad, weight_grad: Grad, x, kernel, g):
  """(dx, dkernel, dbias) of conv(x, kernel) + bias given its gradient g."""
  return input_grad(g, kernel), weight_grad(x, g), jnp.sum(g, axis=(0, 1, 2))


def make_conv3x3(name: str, forward: Forward, input_grad: Grad,
                 weight_grad: Grad,
                 check: Callable[..., None] = check_args
                 ) -> Tuple[Callable[..., jax.Array], Callable[..., jax.Array]]:
  """(conv3x3, conv3x3_bias_relu) over one backend's kernels.

  Args:
    name: the backend's name, for error messages and docstrings.
    forward: (x, kernel, bias or None) -> relu(conv(x, kernel) + bias), or
      conv(x, kernel) without a bias.
    input_grad: (dy, kernel) -> dL/dx.
    weight_grad: (x, dy) -> dL/dkernel.
    check: check(name, x, kernel[, bias]) raising on unsupported arguments.

  Returns:
    conv3x3(x, kernel) and conv3x3_bias_relu(x, kernel, bias), zero 'SAME'
    padding, NHWC/HWIO, differentiable.
  """

  @jax.custom_vjp
  def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    check(name, x, kernel)
    return forward(x, kernel, None)

  def conv_fwd(x, kernel):
    return conv3x3(x, kernel), (x, kernel)

  def conv_bwd(res, dy):
    x, kernel = res
    return input_grad(dy, kernel), weight_grad(x, dy)

  conv3x3.defvjp(conv_fwd, conv_bwd)

  @jax.custom_vjp
  def conv3x3_bias_relu(x: jax.Array, kernel: jax.Array,
                        bias: jax.Array) -> jax.Array:
    check(name, x, kernel, bias)
    return forward(x, kernel, bias)

  def fused_fwd(x, kernel, bias):
    y = conv3x3_bias_relu(x, kernel, bias)
    return y, (x, kernel, y)  # the output decides the ReLU's gradient

  def fused_bwd(res, dy):
    x, kernel, y = res
    g = jnp.where(y > 0, dy, 0.0)  # ReLU's gradient (0 at 0, as jax.nn.relu)
    return _bias_relu_grads(input_grad, weight_grad, x, kernel, g)

  conv3x3_bias_relu.defvjp(fused_fwd, fused_bwd)
  conv3x3.__doc__ = (f"3x3 'SAME' convolution (N, H, W, Cin) * (3, 3, Cin, "
                     f"Cout), float32, by {name}.")
  conv3x3_bias_relu.__doc__ = (f'relu(conv3x3(x, kernel) + bias), bias and '
                               f'ReLU fused into {name}\'s forward.')
  return conv3x3, conv3x3_bias_relu


def make_conv3x3_bias_relu_mask(
    name: str, masked_forward: MaskedForward, input_grad: Grad,
    weight_grad: Grad, check: Callable[..., None] = check_args
) -> Callable[..., jax.Array]:
  """relu(conv3x3(x, kernel) + bias) * mask, the mask fused into the forward.

  Args:
    name: the backend's name, for error messages and docstrings.
    masked_forward: (x, kernel, bias, mask) -> relu(conv + bias) * mask.
    input_grad, weight_grad, check: as for `make_conv3x3`.

  Returns:
    conv3x3_bias_relu_mask(x, kernel, bias, mask) for a float32 (1 or N, H,
    W, 1) mask of non-negative factors (VDSR's are 0/1), differentiable in
    x, kernel and bias; the mask is a constant (zero gradient).
  """

  @jax.custom_vjp
  def conv3x3_bias_relu_mask(x: jax.Array, kernel: jax.Array,
                             bias: jax.Array, mask: jax.Array) -> jax.Array:
    check(name, x, kernel, bias)
    if not mask_fits(x, mask):
      raise ValueError(f'Expected a float32 mask of shape (1 or {x.shape[0]}, '
                       f'{x.shape[1]}, {x.shape[2]}, 1), got {mask.dtype} '
                       f'{mask.shape}.')
    return masked_forward(x, kernel, bias, mask)

  def fwd(x, kernel, bias, mask):
    y = conv3x3_bias_relu_mask(x, kernel, bias, mask)
    return y, (x, kernel, y, mask)

  def bwd(res, dy):
    x, kernel, y, mask = res
    # y > 0 exactly where the ReLU passed and the mask is positive.
    g = jnp.where(y > 0, dy * mask, 0.0)
    return (*_bias_relu_grads(input_grad, weight_grad, x, kernel, g),
            jnp.zeros_like(mask))

  conv3x3_bias_relu_mask.defvjp(fwd, bwd)
  conv3x3_bias_relu_mask.__doc__ = (
      f'relu(conv3x3(x, kernel) + bias) * mask, all fused into {name}\'s '
      'forward.')
  return conv3x3_bias_relu_mask
