"""Winograd F(4x4, 3x3) convolutions on AVX-512 CPUs, with their gradients.

`conv3x3(x, kernel)` and `conv3x3_bias_relu(x, kernel, bias)` compute the
same functions as their oneDNN counterparts in `vdsr_jax.native.dnnl`
(float32, NHWC/HWIO, zero 'SAME' padding) with 4x fewer multiplies:
winograd_conv.cc transforms the kernel (U = G w G^T) and, block by block,
the tiles, and runs the 36 small GEMMs per block, in one custom call per
convolution (forward, input gradient, weight gradient). Both channel
counts must be multiples of 16 (`supports`); VDSR's 64 -> 64 layers are.
`BT`, `G`, `AT` and `transform_kernel` are also the matrices of the jnp
Winograd in `vdsr_jax.conv` ('winograd4').

Rounding differs from a direct convolution by ~1e-6 relative (the
transforms scale by up to 8 and 1/24); tests/test_conv.py bounds it against
a float64 reference.
"""

import jax
import jax.numpy as jnp
import numpy as np

from vdsr_jax.native import dnnl

# Transforms of F(4x4, 3x3) for correlation (Lavin & Gray, 2016), points
# 0, +-1, +-2 and infinity.
BT = np.array([[4, 0, -5, 0, 1, 0],
               [0, -4, -4, 1, 1, 0],
               [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0],
               [0, 4, 0, -5, 0, 1]], np.float64)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 2, -2, 0],
               [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], np.float64)

_HIGHEST = jax.lax.Precision.HIGHEST


def supports(cin: int, cout: int) -> bool:
  """True if a cin -> cout layer can run here (built, AVX-512, 16 | C, K)."""
  return cin % 16 == 0 and cout % 16 == 0 and dnnl.winograd_supported()


def transform_kernel(kernel: jax.Array, g: np.ndarray = G) -> jax.Array:
  """(3, 3, Cin, Cout) -> (alpha^2, Cin, Cout): U = G w G^T per channel pair."""
  g = jnp.asarray(g, kernel.dtype)
  u = jnp.einsum('ai,ijco,bj->abco', g, kernel, g, precision=_HIGHEST)
  return u.reshape((-1,) + kernel.shape[2:])


def _check(x: jax.Array, kernel: jax.Array) -> None:
  if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
    raise TypeError('Winograd conv3x3 is float32 only, got '
                    f'{x.dtype} activations and a {kernel.dtype} kernel.')
  if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[:2] != (3, 3) or (
      x.shape[-1] != kernel.shape[2]):
    raise ValueError('Expected (N, H, W, Cin) activations and a (3, 3, Cin, '
                     f'Cout) kernel, got {x.shape} and {kernel.shape}.')
  if x.shape[-1] % 16 or kernel.shape[-1] % 16:
    raise ValueError('Winograd conv3x3 needs Cin and Cout multiples of 16, '
                     f'got {x.shape[-1]} -> {kernel.shape[-1]}.')


def _ffi(target: str, shape, *args, **attrs) -> jax.Array:
  dnnl._lib()  # pylint: disable=protected-access
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method='sequential')(*args, **attrs)


def _forward(x, kernel, bias, relu: bool):
  return _ffi('vdsr_winograd_fwd', x.shape[:3] + kernel.shape[3:], x, kernel,
              bias, relu=bool(relu))


def _input_grad(dy, kernel):
  return _ffi('vdsr_winograd_bwd_data', dy.shape[:3] + kernel.shape[2:3], dy,
              kernel)


def _weight_grad(x, dy):
  return _ffi('vdsr_winograd_bwd_weights',
              (3, 3, x.shape[-1], dy.shape[-1]), x, dy)


@jax.custom_vjp
def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """3x3 'SAME' convolution (N, H, W, Cin) * (3, 3, Cin, Cout), Winograd."""
  _check(x, kernel)
  return _forward(x, kernel, jnp.zeros(kernel.shape[3:], x.dtype), False)


def _fwd(x, kernel):
  return conv3x3(x, kernel), (x, kernel)


def _bwd(res, dy):
  x, kernel = res
  return _input_grad(dy, kernel), _weight_grad(x, dy)


conv3x3.defvjp(_fwd, _bwd)


@jax.custom_vjp
def conv3x3_bias_relu(x: jax.Array, kernel: jax.Array,
                      bias: jax.Array) -> jax.Array:
  """relu(conv3x3(x, kernel) + bias), bias and ReLU in the output transform."""
  _check(x, kernel)
  if bias.dtype != jnp.float32 or bias.shape != kernel.shape[3:]:
    raise ValueError(f'Expected a float32 bias of shape {kernel.shape[3:]}, '
                     f'got {bias.dtype} {bias.shape}.')
  return _forward(x, kernel, bias, True)


def _fused_fwd(x, kernel, bias):
  y = conv3x3_bias_relu(x, kernel, bias)
  return y, (x, kernel, y)


def _fused_bwd(res, dy):
  x, kernel, y = res
  g = jnp.where(y > 0, dy, 0.0)  # ReLU's gradient (0 at 0, as jax.nn.relu)
  dx, dw = _bwd((x, kernel), g)
  return dx, dw, jnp.sum(g, axis=(0, 1, 2))


conv3x3_bias_relu.defvjp(_fused_fwd, _fused_bwd)
