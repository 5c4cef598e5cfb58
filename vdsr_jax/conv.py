"""3x3 'SAME' convolutions for VDSR (NHWC activations, HWIO kernels).

`conv3x3(x, kernel, bias)` is VDSR's convolution; it picks an algorithm per
layer at trace time (`resolve_method`), from `METHOD` and
`jax.default_backend()`:

  'native_winograd'
           Winograd F(4x4, 3x3) in C++ (vdsr_jax/native/winograd_conv.cc,
           built with the oneDNN kernels): forward, input and weight
           gradients with 4x fewer multiplies, the tile transforms done
           block by block in cache. Needs AVX-512F or AVX2 + FMA (the
           widest is used) and channel counts that are multiples of 16.
           'auto' uses it on CPU for float32 layers it supports (VDSR's
           64 -> 64): ~2.3x faster than 'dnnl' per layer on the 2-core
           AVX-512 benchmark machine; on an AVX2 one the train step is
           2.3x faster than with 'dnnl' (benchmarks/RESULTS.md).
  'dnnl'   oneDNN's convolutions as XLA FFI custom calls, forward, input
           and weight gradients (vdsr_jax/native; built once with
           `python -m vdsr_jax.native.build`). 'auto' uses it on CPU for
           the other float32 layers (VDSR's first and last) whenever it is
           built: ~2.4x faster than 'lax' per 64 -> 64 layer.
  'lax'    XLA's convolution (lax.conv_general_dilated). On GPU/TPU always;
           on CPU when the oneDNN kernels are not built (for 64 -> 64 and
           1 -> 64 layers; no jnp-level alternative below beat it).
  'shift'  one GEMM (N*H*W, Cin) @ (Cin, 9*Cout) giving every tap's
           contribution, then nine shifted adds. XLA:CPU's direct
           convolution is very slow when Cout is tiny (VDSR's last layer,
           64 -> 1: ~1 GFLOP/s); this is 3-5x faster, forward and backward.
           Without oneDNN, 'auto' uses it on CPU when Cout <
           MIN_GEMM_CHANNELS.
  'winograd2', 'winograd4'
           Winograd F(2x2,3x3) / F(4x4,3x3) (Lavin & Gray, 2016): tile
           transforms as fused elementwise ops plus (m+2)^2 batched GEMMs,
           2.25x / 4x fewer multiplies. Exact gradients by autodiff (the
           weight gradient is G^T [V^T dM] G, large GEMMs over all tiles).
           Opt-in only: under XLA the transformed tiles are materialised
           in memory and the GEMMs (K = Cin = 64) are memory-bound, so on
           the benchmark CPU they were ~1.5-2x *slower* than 'lax' (which
           is why 'native_winograd' exists).
  'gemm', 'lax_gemm_wgrad'
           custom VJPs: im2col GEMM forward/input gradient and/or the weight
           gradient as im2col(x)^T @ dy. Opt-in only, slower than 'lax' on
           the benchmark CPU (the (N*H*W, 9*Cin) patch matrix costs more
           memory traffic than the GEMM saves).

Every method computes the same function in float32 up to rounding (see
tests/test_conv.py) and works under jit, grad, vmap and sharding.
"""

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vdsr_jax.native import conv_ops
from vdsr_jax.native import dnnl
from vdsr_jax.native import winograd

# 'auto' or one of METHODS. Read at trace time: set it before the first call
# of a jitted function (jit caches do not see later changes).
METHOD = 'auto'
METHODS = ('lax', 'native_winograd', 'dnnl', 'shift', 'winograd2',
           'winograd4', 'gemm', 'lax_gemm_wgrad')
# On CPU, 'auto' uses 'shift' for layers with fewer output channels.
MIN_GEMM_CHANNELS = 16

# Winograd matrices for correlation (CNN convolution), Lavin & Gray (2016).
_F2 = dict(
    BT=np.array([[1, 0, -1, 0],
                 [0, 1, 1, 0],
                 [0, -1, 1, 0],
                 [0, 1, 0, -1]], np.float64),
    G=np.array([[1, 0, 0],
                [.5, .5, .5],
                [.5, -.5, .5],
                [0, 0, 1]], np.float64),
    AT=np.array([[1, 1, 1, 0],
                 [0, 1, -1, -1]], np.float64),
)
_F4 = dict(BT=winograd.BT, G=winograd.G, AT=winograd.AT)
_WINOGRAD = {'winograd2': (2, _F2), 'winograd4': (4, _F4)}


def lax_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The reference: XLA's convolution, zero 'SAME' padding, no bias."""
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding=((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _combine(terms, coeffs):
  """sum_i coeffs[i] * terms[i], skipping zeros (unrolled constant matmul)."""
  out = None
  for c, t in zip(coeffs, terms):
    if c == 0:
      continue
    t = t if c == 1 else (-t if c == -1 else t * np.asarray(c, t.dtype))
    out = t if out is None else out + t
  return out


def winograd_conv3x3(x: jax.Array, kernel: jax.Array, m: int = 2) -> jax.Array:
  """3x3 'SAME' convolution by Winograd F(m x m, 3 x 3); same result as lax.

  Args:
    x: (N, H, W, Cin).
    kernel: (3, 3, Cin, Cout).
    m: output tile size, 2 or 4.

  Returns:
    (N, H, W, Cout).
  """
  mats = _WINOGRAD[f'winograd{m}'][1]
  bt, at = mats['BT'], mats['AT']
  alpha = m + 2
  n, h, w, cin = x.shape
  cout = kernel.shape[-1]
  ty, tx = -(-h // m), -(-w // m)
  # One zero row/column before (the 'SAME' border), the rest after: the
  # tiles cover m*ty + 2 rows.
  xp = jnp.pad(x, ((0, 0), (1, m * ty + 1 - h), (1, m * tx + 1 - w), (0, 0)))
  # V = B^T d B for every tile, as strided slices and constant adds.
  rows = [xp[:, i:i + m * (ty - 1) + 1:m] for i in range(alpha)]
  rows = [_combine(rows, bt[a]) for a in range(alpha)]  # (N, ty, Wp, C)
  v = []
  for r in rows:
    cols = [r[:, :, j:j + m * (tx - 1) + 1:m] for j in range(alpha)]
    v.extend(_combine(cols, bt[b]) for b in range(alpha))
  v = jnp.stack(v).reshape(alpha * alpha, n * ty * tx, cin)
  u = winograd.transform_kernel(kernel, mats['G']).astype(x.dtype)
  mm = jax.lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))
  mm = mm.reshape(alpha, alpha, n, ty, tx, cout)
  # Y = A^T M A, tile by tile, then interleave the m x m tiles.
  half = [_combine([mm[a] for a in range(alpha)], at[i]) for i in range(m)]
  out = [[_combine([hh[b] for b in range(alpha)], at[j])
          for j in range(m)] for hh in half]
  out = jnp.stack([jnp.stack(o, axis=3) for o in out], axis=2)
  out = out.reshape(n, m * ty, m * tx, cout)
  return out[:, :h, :w]


def _patches(x: jax.Array) -> jax.Array:
  """(N, H, W, C) -> (N*H*W, 9*C): the zero-padded 3x3 neighbourhoods (im2col).

  Column (3*i + j)*C + c holds x[n, y+i-1, x+j-1, c], the row order of an
  HWIO kernel reshaped to (9*C, Cout).
  """
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  cols = [xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)]
  return jnp.concatenate(cols, axis=-1).reshape(n * h * w, 9 * c)


def _gemm_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """3x3 'SAME' convolution as one GEMM (N*H*W, 9*Cin) @ (9*Cin, Cout)."""
  n, h, w, _ = x.shape
  y = jnp.dot(_patches(x), kernel.reshape(-1, kernel.shape[-1]))
  return y.reshape(n, h, w, kernel.shape[-1])


def _flip(kernel: jax.Array) -> jax.Array:
  """The kernel of the input gradient: rotated 180 degrees, I and O swapped."""
  return jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))


def _weight_grad(x: jax.Array, dy: jax.Array) -> jax.Array:
  """dL/dkernel = im2col(x)^T @ dy: one GEMM contracting over N*H*W."""
  cin, cout = x.shape[-1], dy.shape[-1]
  dw = jax.lax.dot_general(_patches(x), dy.reshape(-1, cout),
                           (((0,), (0,)), ((), ())))
  return dw.reshape(3, 3, cin, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _custom_conv(x, kernel, fwd_kind):
  if fwd_kind == 'gemm':
    return _gemm_conv(x, kernel)
  return lax_conv3x3(x, kernel)


def _custom_conv_fwd(x, kernel, fwd_kind):
  return _custom_conv(x, kernel, fwd_kind), (x, kernel)


def _custom_conv_bwd(fwd_kind, res, dy):
  x, kernel = res
  if fwd_kind == 'gemm':
    dx = _gemm_conv(dy, _flip(kernel))
  else:
    dx = lax_conv3x3(dy, _flip(kernel))
  return dx, _weight_grad(x, dy).astype(kernel.dtype)


_custom_conv.defvjp(_custom_conv_fwd, _custom_conv_bwd)


def shift_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """3x3 'SAME' convolution as one GEMM then nine shifted adds.

  Z = x @ [w_00 .. w_22] gives, per pixel, the 9 taps' contributions
  (N, H, W, 9, Cout); y[p] = sum_ij Z_ij[p + (i-1, j-1)]. Only worth it
  for few output channels (VDSR's last layer, 64 -> 1), where XLA:CPU's
  direct convolution is very slow and Z is small. Plain jnp: its gradient
  is again a few GEMMs (x^T dZ, dZ W^T) and shifted adds.
  """
  n, h, w, cin = x.shape
  cout = kernel.shape[-1]
  wmat = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(cin, 9 * cout)
  z = jnp.dot(x.reshape(-1, cin), wmat).reshape(n, h, w, 9, cout)
  zp = jnp.pad(z, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)))
  terms = [zp[:, i:i + h, j:j + w, 3 * i + j] for i in range(3)
           for j in range(3)]
  return functools.reduce(jnp.add, terms)


def resolve_method(cin: int, cout: int, method: Optional[str] = None,
                   dtype: Any = jnp.float32) -> str:
  """The concrete method for a layer, given `METHOD`, backend and dtype."""
  method = METHOD if method is None else method
  if method != 'auto':
    return method
  if jax.default_backend() != 'cpu':
    return 'lax'
  if jnp.dtype(dtype) == jnp.float32 and dnnl.available():
    return 'native_winograd' if winograd.supports(cin, cout) else 'dnnl'
  if cout < MIN_GEMM_CHANNELS:
    return 'shift'
  return 'lax'


def conv3x3(x: jax.Array, kernel: jax.Array, bias: Optional[jax.Array] = None,
            method: Optional[str] = None, relu: bool = False,
            mask: Optional[jax.Array] = None) -> jax.Array:
  """3x3 zero-padded convolution + bias (+ ReLU) (* mask), by the fastest path.

  Args:
    x: (N, H, W, Cin) activations.
    kernel: (3, 3, Cin, Cout) HWIO kernel.
    bias: optional (Cout,).
    method: override of the module-level `METHOD`.
    relu: apply ReLU to the result; with 'dnnl' or 'native_winograd' and a
      bias, it is fused into the convolution (one memory pass less).
    mask: optional (N, H, W, 1) 0/1 array multiplied into the result (after
      the ReLU); a constant, no gradient flows to it. With
      'native_winograd', a bias and ReLU, a (1 or N, H, W, 1) mask is fused
      into the convolution too.

  Returns:
    (N, H, W, Cout).
  """
  kernel = kernel.astype(x.dtype)
  method = resolve_method(x.shape[-1], kernel.shape[-1], method, x.dtype)
  if mask is not None:
    mask = jax.lax.stop_gradient(mask.astype(x.dtype))
  if (method == 'native_winograd' and relu and bias is not None
      and mask is not None and conv_ops.mask_fits(x, mask)):
    return winograd.conv3x3_bias_relu_mask(x, kernel, bias.astype(x.dtype),
                                           mask)
  fused = {'dnnl': dnnl.conv3x3_bias_relu,
           'native_winograd': winograd.conv3x3_bias_relu}.get(method)
  if fused is not None and relu and bias is not None:
    y = fused(x, kernel, bias.astype(x.dtype))
    return y if mask is None else y * mask
  if method == 'lax':
    y = lax_conv3x3(x, kernel)
  elif method == 'native_winograd':
    y = winograd.conv3x3(x, kernel)
  elif method == 'dnnl':
    y = dnnl.conv3x3(x, kernel)
  elif method == 'shift':
    y = shift_conv3x3(x, kernel)
  elif method == 'gemm':
    y = _custom_conv(x, kernel, 'gemm')
  elif method == 'lax_gemm_wgrad':
    y = _custom_conv(x, kernel, 'lax')
  elif method in _WINOGRAD:
    y = winograd_conv3x3(x, kernel, _WINOGRAD[method][0])
  else:
    raise ValueError(f'Unknown conv method {method!r}.')
  if bias is not None:
    y = y + bias.astype(y.dtype)
  if relu:
    y = jax.nn.relu(y)
  return y if mask is None else y * mask


class Conv3x3(nn.Module):
  """Drop-in for `nn.Conv(features, (3, 3), padding='SAME')` via `conv3x3`.

  Same parameters as nn.Conv: 'kernel' (3, 3, Cin, features) HWIO and
  'bias' (features,), float32; computes in `dtype` like nn.Conv. With
  `relu=True` it is `nn.relu(nn.Conv(...)(x))`, fused where the method can.
  """
  features: int
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros
  dtype: Any = jnp.float32
  method: Optional[str] = None
  relu: bool = False

  @nn.compact
  def __call__(self, x: jax.Array,
               mask: Optional[jax.Array] = None) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init,
                        (3, 3, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    x = x.astype(self.dtype)
    return conv3x3(x, kernel.astype(self.dtype), bias.astype(self.dtype),
                   self.method, self.relu, mask)
