"""MATLAB-exact image operations in JAX: imresize, rgb2ycbcr, ycbcr2rgb, modcrop, shave.

The super-resolution benchmarks are defined by MATLAB's `imresize` (bicubic,
antialiased when shrinking) and `rgb2ycbcr` (BT.601, studio range). Common
resize functions (PIL, OpenCV, jax.image.resize) differ from MATLAB's and move
PSNR by tenths of a dB, so these are re-derived from MATLAB's definitions.

All functions accept a single image (H, W) / (H, W, C) or a batch (N, H, W, C),
are jit-able (sizes and scales are static Python values) and keep the layout.
"""

import functools
import math
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

# MATLAB's BT.601 studio-range matrix (rows: Y, Cb, Cr), for RGB in [0, 1]
# mapped to [16, 235] / [16, 240] on the 0..255 scale.
_YCBCR_MATRIX = np.array([[65.481, 128.553, 24.966],
                          [-37.797, -74.203, 112.0],
                          [112.0, -93.786, -18.214]], dtype=np.float64)
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0], dtype=np.float64)

Array = Union[jax.Array, np.ndarray]


# ----------------------------------------------------------------------------
# imresize
# ----------------------------------------------------------------------------


def cubic(x: np.ndarray) -> np.ndarray:
  """MATLAB's bicubic kernel (Keys, a = -0.5), support [-2, 2]."""
  absx = np.abs(x)
  absx2 = absx**2
  absx3 = absx**3
  inner = (1.5 * absx3 - 2.5 * absx2 + 1.0) * (absx <= 1)
  outer = (-0.5 * absx3 + 2.5 * absx2 - 4.0 * absx + 2.0) * (
      (absx > 1) & (absx <= 2))
  return inner + outer


def output_size(in_size: int, scale: float) -> int:
  """MATLAB's rule: the output length is ceil(scale * input length)."""
  return int(math.ceil(float(scale) * in_size))


@functools.lru_cache(maxsize=256)
def contributions(in_length: int, out_length: int, scale: float,
                  antialias: bool = True) -> Tuple[np.ndarray, np.ndarray]:
  """Weights and source indices of MATLAB's 1-D bicubic resampling.

  Follows imresize.m's `contributions`: output pixel i (1-based) maps to
  u = i / scale + 0.5 * (1 - 1 / scale) in input coordinates; when shrinking
  with antialiasing the kernel is stretched by 1 / scale. Weights are
  normalised to sum to one, out-of-range indices mirror symmetrically, and
  index columns whose weights are all zero are dropped.

  Returns:
    (weights, indices): float64 (out_length, P) and int32 (out_length, P),
    0-based indices into the input.
  """
  if in_length < 1 or out_length < 1:
    raise ValueError(f'imresize needs lengths >= 1, got {in_length} -> '
                     f'{out_length}.')
  scale = float(scale)
  if scale < 1 and antialias:
    kernel = lambda x: scale * cubic(scale * x)
    kernel_width = 4.0 / scale
  else:
    kernel = cubic
    kernel_width = 4.0
  x = np.arange(1, out_length + 1, dtype=np.float64)
  u = x / scale + 0.5 * (1.0 - 1.0 / scale)
  left = np.floor(u - kernel_width / 2.0)
  taps = int(math.ceil(kernel_width)) + 2
  indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
  weights = kernel(u[:, None] - indices)
  weights = weights / np.sum(weights, axis=1, keepdims=True)
  mirror = np.concatenate(
      [np.arange(in_length), np.arange(in_length - 1, -1, -1)])
  indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
  keep = np.any(weights != 0, axis=0)
  return weights[:, keep], indices[:, keep].astype(np.int32)


def _resize_axis(x: jax.Array, axis: int, out_length: int, scale: float,
                 antialias: bool) -> jax.Array:
  """Resamples float array `x` along `axis` (gather + weighted sum)."""
  weights, indices = contributions(x.shape[axis], out_length, scale, antialias)
  gathered = jnp.take(x, jnp.asarray(indices), axis=axis)  # axis -> (out, P)
  w_shape = [1] * gathered.ndim
  w_shape[axis] = weights.shape[0]
  w_shape[axis + 1] = weights.shape[1]
  w = jnp.asarray(weights.reshape(w_shape), dtype=x.dtype)
  return jnp.sum(gathered * w, axis=axis + 1)


def _round_half_away(x: jax.Array) -> jax.Array:
  """MATLAB's round (halves away from zero)."""
  return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def _to_uint8(x: jax.Array) -> jax.Array:
  """MATLAB's double -> uint8 conversion: round, then saturate."""
  return jnp.clip(_round_half_away(x), 0, 255).astype(jnp.uint8)


def _spatial_axes(ndim: int) -> Tuple[int, int]:
  if ndim == 2:
    return 0, 1
  if ndim == 3:
    return 0, 1
  if ndim == 4:
    return 1, 2
  raise ValueError('Expected an image (H, W), (H, W, C) or a batch '
                   f'(N, H, W, C); got an array with {ndim} dimensions.')


def imresize(img: Array,
             scale: Optional[Union[float, Sequence[float]]] = None,
             output_shape: Optional[Sequence[int]] = None,
             antialias: bool = True) -> jax.Array:
  """MATLAB's `imresize(img, scale, 'bicubic')` (or with an output size).

  Args:
    img: (H, W), (H, W, C) or (N, H, W, C); float (any range) or uint8.
    scale: one factor for both axes, or (row_scale, col_scale). The output
      size is ceil(scale * size), as in MATLAB.
    output_shape: (out_h, out_w) instead of `scale`; the scale of each axis
      is then out / in, as in MATLAB.
    antialias: widen the kernel when shrinking (MATLAB's default).

  Returns:
    The resized image, float32 for float input; uint8 input gives uint8
    output rounded after each axis, as MATLAB does.
  """
  img = jnp.asarray(img)
  ax_h, ax_w = _spatial_axes(img.ndim)
  in_h, in_w = img.shape[ax_h], img.shape[ax_w]
  if (scale is None) == (output_shape is None):
    raise ValueError('imresize needs exactly one of `scale` or '
                     '`output_shape`.')
  if scale is not None:
    scales = ((float(scale), float(scale)) if np.isscalar(scale)
              else tuple(float(s) for s in scale))
    if len(scales) != 2 or not all(math.isfinite(s) and s > 0
                                   for s in scales):
      raise ValueError(f'imresize scale must be positive and finite, got '
                       f'{scale!r}.')
    out_h, out_w = output_size(in_h, scales[0]), output_size(in_w, scales[1])
  else:
    out_h, out_w = (int(v) for v in output_shape)
    if out_h < 1 or out_w < 1:
      raise ValueError(f'imresize output_shape must be positive, got '
                       f'{tuple(output_shape)}.')
    scales = (out_h / in_h, out_w / in_w)
  is_uint8 = img.dtype == jnp.uint8
  if not (is_uint8 or jnp.issubdtype(img.dtype, jnp.floating)):
    raise TypeError(f'imresize takes float or uint8 images, got {img.dtype}.')
  x = img.astype(jnp.float32) if is_uint8 or img.dtype != jnp.float64 else img
  # MATLAB resizes the axis with the smaller scale first (rows on ties).
  order = [(ax_h, out_h, scales[0]), (ax_w, out_w, scales[1])]
  order.sort(key=lambda item: item[2])
  for axis, length, s in order:
    if length == x.shape[axis] and s == 1.0:
      continue  # MATLAB skips an axis whose scale is exactly one.
    x = _resize_axis(x, axis, length, s, antialias)
    if is_uint8:
      x = _round_half_away(jnp.clip(x, 0, 255))
  return x.astype(jnp.uint8) if is_uint8 else x


# ----------------------------------------------------------------------------
# Colour conversion
# ----------------------------------------------------------------------------


def _check_channels(img: jax.Array, name: str) -> None:
  if img.ndim < 3 or img.shape[-1] != 3:
    raise ValueError(f'{name} expects a 3-channel image (..., H, W, 3); got '
                     f'shape {tuple(img.shape)}.')


def rgb2ycbcr(img: Array, only_y: bool = False) -> jax.Array:
  """MATLAB's `rgb2ycbcr` (BT.601 studio range).

  uint8 input (0..255) gives uint8 output rounded exactly as MATLAB does
  (Y = round(16 + (65.481 R + 128.553 G + 24.966 B) / 255), computed in exact
  integer arithmetic); float input in [0, 1] gives float output in [0, 1]
  (Y in [16/255, 235/255]).

  Args:
    img: (..., H, W, 3) RGB.
    only_y: return only the luminance, keeping a channel axis of size 1.
  """
  img = jnp.asarray(img)
  _check_channels(img, 'rgb2ycbcr')
  rows = _YCBCR_MATRIX[:1] if only_y else _YCBCR_MATRIX
  offset = _YCBCR_OFFSET[:rows.shape[0]]
  if img.dtype == jnp.uint8:
    # 1000 * matrix is integral: sum = 1000 * 255 * (Y - offset) exactly.
    int_rows = jnp.asarray(np.round(rows * 1000).astype(np.int32))
    acc = jnp.einsum('...c,kc->...k', img.astype(jnp.int32), int_rows,
                     preferred_element_type=jnp.int32)
    denom = 255000
    # round(acc / denom) with halves away from zero, in integers.
    rounded = jnp.where(acc >= 0, (acc + denom // 2) // denom,
                        -((-acc + denom // 2) // denom))
    out = rounded + jnp.asarray(offset.astype(np.int32))
    return jnp.clip(out, 0, 255).astype(jnp.uint8)
  if not jnp.issubdtype(img.dtype, jnp.floating):
    raise TypeError(f'rgb2ycbcr takes uint8 or float images, got {img.dtype}.')
  t = jnp.asarray(rows / 255.0, dtype=img.dtype)
  return (jnp.einsum('...c,kc->...k', img, t,
                     precision=jax.lax.Precision.HIGHEST) +
          jnp.asarray(offset / 255.0, dtype=img.dtype))


def ycbcr2rgb(img: Array) -> jax.Array:
  """MATLAB's `ycbcr2rgb`, the inverse of `rgb2ycbcr`.

  uint8 in gives uint8 out (rounded, saturated); float in [0, 1] gives float
  out, not clipped (as MATLAB).
  """
  img = jnp.asarray(img)
  _check_channels(img, 'ycbcr2rgb')
  inv = np.linalg.inv(_YCBCR_MATRIX)
  if img.dtype == jnp.uint8:
    t = jnp.asarray(255.0 * inv, dtype=jnp.float32)
    off = jnp.asarray(255.0 * inv @ _YCBCR_OFFSET, dtype=jnp.float32)
    out = jnp.einsum('...c,kc->...k', img.astype(jnp.float32), t,
                     precision=jax.lax.Precision.HIGHEST) - off
    return _to_uint8(out)
  if not jnp.issubdtype(img.dtype, jnp.floating):
    raise TypeError(f'ycbcr2rgb takes uint8 or float images, got {img.dtype}.')
  t = jnp.asarray(255.0 * inv, dtype=img.dtype)
  off = jnp.asarray(inv @ _YCBCR_OFFSET, dtype=img.dtype)
  return jnp.einsum('...c,kc->...k', img, t,
                    precision=jax.lax.Precision.HIGHEST) - off


# ----------------------------------------------------------------------------
# Cropping
# ----------------------------------------------------------------------------


def modcrop(img: Array, scale: int) -> Array:
  """Crops H and W down to multiples of `scale` (top-left kept), as modcrop.m."""
  scale = int(scale)
  if scale < 1:
    raise ValueError(f'modcrop scale must be >= 1, got {scale}.')
  ax_h, ax_w = _spatial_axes(img.ndim)
  h = img.shape[ax_h] - img.shape[ax_h] % scale
  w = img.shape[ax_w] - img.shape[ax_w] % scale
  index = [slice(None)] * img.ndim
  index[ax_h] = slice(0, h)
  index[ax_w] = slice(0, w)
  return img[tuple(index)]


def shave(img: Array, border: int) -> Array:
  """Removes `border` pixels from every side of the image(s)."""
  border = int(border)
  if border < 0:
    raise ValueError(f'shave border must be >= 0, got {border}.')
  if border == 0:
    return img
  ax_h, ax_w = _spatial_axes(img.ndim)
  if img.shape[ax_h] <= 2 * border or img.shape[ax_w] <= 2 * border:
    raise ValueError(f'Cannot shave {border} pixels from an image of size '
                     f'{img.shape[ax_h]}x{img.shape[ax_w]}.')
  index = [slice(None)] * img.ndim
  index[ax_h] = slice(border, -border)
  index[ax_w] = slice(border, -border)
  return img[tuple(index)]
