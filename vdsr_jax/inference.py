"""Running the network on whole images: shape buckets and a jit cache.

Images of many sizes would each trigger an XLA compilation. Instead every
image is zero-padded (bottom/right) up to a multiple of `bucket` pixels and a
mask zeroes the padded area after every layer (see `VDSR.__call__`), so a
compiled function serves all images of a bucket and the output inside the
true image is the same as an unpadded run. An image whose sides are already
multiples of `bucket` needs neither: it runs the unmasked program (one more
compilation per such shape), which is exactly the unpadded run.
"""

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vdsr_jax import models
from vdsr_jax import weights as weights_lib

DEFAULT_BUCKET = 32


def bucket_size(n: int, bucket: int) -> int:
  """`n` rounded up to a multiple of `bucket`."""
  return -(-int(n) // bucket) * bucket


@functools.lru_cache(maxsize=None)
def _compiled_forward(depth: int, features: int, residual: bool,
                      dtype: str):
  """One jitted forward per architecture and compute dtype (by name); XLA
  caches one program per shape."""
  model = models.VDSR(depth=depth, features=features, residual=residual,
                      dtype=jnp.dtype(dtype))

  @jax.jit
  def forward(params, x, valid):
    """`valid`: None, or the true (height, width) inside the padded `x` as
    an int32 array (traced, so one program serves a whole bucket); the mask
    is built here, inside the program, not as separate dispatches."""
    mask = None
    if valid is not None:
      rows = jnp.arange(x.shape[1]) < valid[0]
      cols = jnp.arange(x.shape[2]) < valid[1]
      mask = (rows[:, None] & cols[None, :])[None, :, :, None]
      mask = mask.astype(jnp.float32)
    return model.apply({'params': params}, x, mask)

  return forward


def network_forward(params: Any, x: Any, *,
                    bucket: Optional[int] = DEFAULT_BUCKET,
                    residual: bool = True,
                    dtype: Any = jnp.float32) -> jax.Array:
  """Applies VDSR to a batch of luminance images, padding to a shape bucket.

  Args:
    params: VDSR params (inner dict or {'params': ...}).
    x: (N, H, W, 1) float images in [0, 1] (the bicubic-upscaled input).
    bucket: pad H and W up to a multiple of this (None: no padding).
    residual: whether the model adds its input to the output.
    dtype: computation dtype of the network; jnp.bfloat16 is mixed
      precision (float32 parameters, input, residual sum and output), faster
      on accelerators with bf16 matrix units but less exact: opt-in, never
      used by the evaluation or `upscale`.

  Returns:
    (N, H, W, 1) float32 network output, not clipped.
  """
  params = weights_lib.check_params(params)
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 4 or x.shape[-1] != 1:
    raise ValueError(f'Expected (N, H, W, 1) luminance, got {x.shape}.')
  n, h, w, _ = x.shape
  depth = len(params)
  features = int(np.shape(params['conv0']['kernel'])[-1])
  forward = _compiled_forward(depth, features, residual, jnp.dtype(dtype).name)
  if not bucket:
    return forward(params, x, None)
  ph, pw = bucket_size(h, bucket), bucket_size(w, bucket)
  if (ph, pw) == (h, w):  # already a bucket shape: no padding, no mask
    return forward(params, x, None)
  padded = jnp.pad(x, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)))
  valid = np.array([h, w], np.int32)
  return forward(params, padded, valid)[:, :h, :w, :]


def to_uint8(x: Any) -> np.ndarray:
  """Float image in [0, 1] -> uint8 as MATLAB's uint8(x * 255)."""
  x = np.asarray(x, np.float64) * 255.0
  return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)
