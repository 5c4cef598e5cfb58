"""Winograd F(4x4, 3x3) convolutions on x86-64 CPUs, with their gradients.

`conv3x3(x, kernel)` and `conv3x3_bias_relu(x, kernel, bias)` compute the
same functions as their oneDNN counterparts in `vdsr_jax.native.dnnl`
(float32, NHWC/HWIO, zero 'SAME' padding) with 4x fewer multiplies:
winograd_conv.cc transforms the kernel (U = G w G^T) and, block by block,
the tiles, and runs the 36 small GEMMs per block, in one custom call per
convolution (forward, input gradient, weight gradient). The CPU needs
AVX-512F or AVX2 + FMA (`dnnl.winograd_isa` says which runs) and both channel
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

from vdsr_jax.native import conv_ops
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
  """True if a cin -> cout layer can run here (AVX-512/AVX2, 16 | C, K)."""
  return cin % 16 == 0 and cout % 16 == 0 and dnnl.winograd_supported()


def transform_kernel(kernel: jax.Array, g: np.ndarray = G) -> jax.Array:
  """(3, 3, Cin, Cout) -> (alpha^2, Cin, Cout): U = G w G^T per channel pair."""
  g = jnp.asarray(g, kernel.dtype)
  u = jnp.einsum('ai,ijco,bj->abco', g, kernel, g, precision=_HIGHEST)
  return u.reshape((-1,) + kernel.shape[2:])


def _check(name, x, kernel, bias=None) -> None:
  conv_ops.check_args(name, x, kernel, bias)
  if x.shape[-1] % 16 or kernel.shape[-1] % 16:
    raise ValueError(f'{name} conv3x3 needs Cin and Cout multiples of 16, '
                     f'got {x.shape[-1]} -> {kernel.shape[-1]}.')


def _forward(x, kernel, bias):
  relu = bias is not None
  if bias is None:
    bias = jnp.zeros(kernel.shape[3:], x.dtype)
  return dnnl.call('vdsr_winograd_fwd', x.shape[:3] + kernel.shape[3:], x,
                   kernel, bias, relu=relu)


def _input_grad(dy, kernel):
  return dnnl.call('vdsr_winograd_bwd_data', dy.shape[:3] + kernel.shape[2:3],
                   dy, kernel)


def _weight_grad(x, dy):
  return dnnl.call('vdsr_winograd_bwd_weights',
                   (3, 3, x.shape[-1], dy.shape[-1]), x, dy)


conv3x3, conv3x3_bias_relu = conv_ops.make_conv3x3(
    'Winograd', _forward, _input_grad, _weight_grad, check=_check)

# The bucket mask of vdsr_jax.inference, multiplied in by the output
# transform instead of a separate pass over every layer's output.
conv3x3_bias_relu_mask = conv_ops.make_conv3x3_bias_relu_mask(
    'Winograd',
    lambda x, kernel, bias, mask: dnnl.call(
        'vdsr_winograd_fwd_masked', x.shape[:3] + kernel.shape[3:], x, kernel,
        bias, mask, relu=True),
    _input_grad, _weight_grad, check=_check)
