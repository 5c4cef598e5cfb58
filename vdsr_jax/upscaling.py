"""Super-resolving images with VDSR: `upscale` and the upscale command line.

`upscale(params, img, scale)` follows the paper's colour handling (and this
package's evaluation protocol): RGB goes to YCbCr with MATLAB's `rgb2ycbcr`,
every channel is upscaled with MATLAB-exact bicubic `imresize`, the
luminance then goes through the network, and the result comes back to RGB
with `ycbcr2rgb`. Grayscale images are their own luminance; an alpha channel
is upscaled bicubically.

Large images are processed in overlapping tiles so that memory stays bounded:
every output pixel of a tile is computed from a window that extends `depth`
pixels (the receptive-field radius of `depth` 3x3 convolutions) beyond it, so
tiled and untiled results agree to float rounding. All windows of an image
have one shape (see `axis_tiles`), so one compiled network serves every tile;
an axis shorter than a tile is padded with `inference.network_forward`'s
mask as for untiled images.

Compilation: the network is compiled once per architecture and padded shape
(untiled images are padded to multiples of 32 pixels, tiles share one
shape), the small colour-conversion and resize programs once per image
shape and scale; all are cached for the life of the process, so a second
image of the same size compiles nothing.

The command line (`python -m vdsr_jax.upscale`, console script
`vdsr-upscale`) is in `main`; `vdsr_jax/upscale.py` only starts it, so that
the package attribute `vdsr_jax.upscale` stays this module's function.
"""

import functools
import math
import numbers
import os
import pathlib
import sys
from typing import Any, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from vdsr_jax import image_io
from vdsr_jax import image_ops
from vdsr_jax import inference
from vdsr_jax import weights as weights_lib

# Tiling: with tile=None, images whose upscaled size exceeds AUTO_TILE_PIXELS
# are cut into tiles of about DEFAULT_TILE x DEFAULT_TILE output pixels. One
# 512-pixel tile of the 20-layer, 64-filter network holds ~85 MB per
# activation map, where a whole 2x-upscaled 1080p frame would need ~2 GB.
DEFAULT_TILE = 512
AUTO_TILE_PIXELS = 1024 * 1024

# Float images must lie in [0, 1]. Values at most this far outside are
# accepted (and clipped): float32 arithmetic such as a colour conversion or
# x / 255 * 255 / 255 lands a few ulps (1 ulp = 6e-8 near 1.0) outside the
# range. 1e-6 is 1/4000 of an 8-bit level, far below anything visible, while
# any real range error (0..255 floats, signed images) is still caught.
FLOAT_TOLERANCE = 1e-6

_MAX_VALUES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


# ----------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------


def _check_scale(scale: Any) -> float:
  """Returns `scale` as a float; raises TypeError / ValueError if invalid."""
  if isinstance(scale, (bool, np.bool_)):
    raise TypeError(f'scale must be a real number, got a bool ({scale}).')
  if not isinstance(scale, numbers.Real):
    ok = (np.ndim(scale) == 0 and hasattr(scale, 'dtype') and
          (jnp.issubdtype(scale.dtype, jnp.floating) or
           jnp.issubdtype(scale.dtype, jnp.integer)))
    if not ok:
      raise TypeError(f'scale must be a real number, got {type(scale).__name__}'
                      f' ({scale!r}).')
  value = float(scale)
  if not math.isfinite(value):
    raise ValueError(f'scale must be finite, got {value}.')
  if value < 1:
    raise ValueError(f'scale must be >= 1 (VDSR only enlarges), got {value}.')
  return value


def _check_image(img: Any) -> np.ndarray:
  """Validates an image or batch; returns it as a numpy array (not copied)."""
  if not hasattr(img, 'shape') or not hasattr(img, 'dtype'):
    raise TypeError('img must be a numpy or JAX array, got '
                    f'{type(img).__name__}.')
  a = np.asarray(img)
  dtype = a.dtype
  if dtype not in _MAX_VALUES and not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f'Unsupported image dtype {dtype}: use uint8 (0..255), '
                    'uint16 (0..65535) or float (0..1).')
  if a.ndim not in (2, 3, 4):
    raise ValueError('img must be (H, W), (H, W, C) or a batch (N, H, W, C); '
                     f'got shape {a.shape}.')
  if a.ndim >= 3 and a.shape[-1] not in (1, 3, 4):
    raise ValueError(f'img has {a.shape[-1]} channels (shape {a.shape}); '
                     'expected 1 (gray), 3 (RGB) or 4 (RGBA).')
  if a.size == 0:
    raise ValueError(f'img is empty (shape {a.shape}).')
  if dtype not in _MAX_VALUES:
    f = a.astype(np.float32) if dtype == jnp.bfloat16 else a
    if not np.all(np.isfinite(f)):
      raise ValueError('img contains NaN or infinite values.')
    lo, hi = float(np.min(f)), float(np.max(f))
    if lo < -FLOAT_TOLERANCE or hi > 1 + FLOAT_TOLERANCE:
      raise ValueError(f'Float images must have values in [0, 1]; got '
                       f'[{lo:g}, {hi:g}]. Divide 8-bit data by 255.')
  return a


def _check_tile(tile: Any) -> Optional[int]:
  """None (automatic), 0 (off) or a tile size in output pixels."""
  if tile is None:
    return None
  if isinstance(tile, (bool, np.bool_)):
    return DEFAULT_TILE if tile else 0
  if not isinstance(tile, numbers.Integral):
    raise TypeError(f'tile must be an int, None or a bool, got '
                    f'{type(tile).__name__} ({tile!r}).')
  if tile < 0:
    raise ValueError(f'tile must be >= 0 (0 disables tiling), got {tile}.')
  return int(tile)


# ----------------------------------------------------------------------------
# Compiled pre- and post-processing (one program per image shape and scale)
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=('maxval',))
def _to_planes(img: jax.Array, *, maxval: float) -> jax.Array:
  """(H, W, C) image -> (C, H, W) float32 planes Y[, Cb, Cr][, alpha].

  Values are in [0, 1]-based units (Y in [16, 235] / 255 for RGB input);
  gray images are their own Y.
  """
  x = img.astype(jnp.float32) / maxval
  if x.shape[-1] > 1:
    x = jnp.concatenate([image_ops.rgb2ycbcr(x[..., :3]), x[..., 3:]], -1)
  return jnp.moveaxis(x, -1, 0)


@functools.partial(jax.jit, static_argnames=('scale',))
def _resize_plane(plane: jax.Array, *, scale: float) -> jax.Array:
  """MATLAB bicubic imresize of one (H, W) plane.

  Planes are resized one call at a time: XLA materialises imresize's
  gathered taps (about 6 x the output size), so resizing all channels at
  once would hold several hundred MB more at 1080p.
  """
  return image_ops.imresize(plane, scale)


@functools.partial(jax.jit, static_argnames=('maxval', 'dtype'))
def _finish(y: jax.Array, rest: Tuple[jax.Array, ...], *, maxval: float,
            dtype: Optional[str]) -> jax.Array:
  """Upscaled Y (H', W') and other planes -> the output image (H', W', C).

  Y is clipped to [0, 1] (as the evaluation's uint8 conversion does), RGB
  and alpha are clipped to [0, 1]; with an integer `dtype` values are scaled
  by `maxval` and rounded half away from zero (MATLAB's conversion).
  """
  y = jnp.clip(y, 0.0, 1.0)
  if not rest:
    out = y[..., None]
  else:
    rgb = image_ops.ycbcr2rgb(jnp.stack([y, rest[0], rest[1]], axis=-1))
    out = jnp.concatenate([rgb] + [p[..., None] for p in rest[2:]], axis=-1)
    out = jnp.clip(out, 0.0, 1.0)
  if dtype is None:
    return out
  return jnp.floor(out * maxval + 0.5).astype(dtype)


# ----------------------------------------------------------------------------
# The network on the luminance, whole or in tiles
# ----------------------------------------------------------------------------


def axis_tiles(length: int, tile: int,
               margin: int) -> Tuple[int, List[Tuple[int, int, int]]]:
  """Cuts one axis into tiles; returns (window, [(start, end, offset)]).

  The cores [start, end) partition [0, length) into about length / tile
  balanced pieces. Each core is computed from a window of `window` pixels
  starting at `offset` that holds `margin` pixels on each side of the core,
  except where the image ends; windows near the border slide inwards instead
  of shrinking, so every window has the same size and one compiled network
  serves them all without padding. `window` is a multiple of the network's
  bucket (so tiles of images of different sizes share it too), or the whole
  axis when one tile covers it.
  """
  n = -(-length // tile)
  window = inference.bucket_size(-(-length // max(n, 1)) + 2 * margin,
                                 inference.DEFAULT_BUCKET)
  if n <= 1 or window >= length:
    return length, [(0, length, 0)]
  stride = window - 2 * margin
  tiles = []
  for start in range(0, length, stride):
    end = min(start + stride, length)
    tiles.append((start, end, min(max(start - margin, 0), length - window)))
  return window, tiles


def _network_y(params: Any, y: jax.Array, tile: int) -> np.ndarray:
  """VDSR on one upscaled luminance (H', W'); tiled when `tile` > 0.

  A core pixel is at least `depth` pixels (the receptive-field radius of
  `depth` 3x3 convolutions) inside its window, or at the true image border,
  so it sees exactly what it would see in the whole image.
  """
  h, w = y.shape
  margin = len(params)
  win_h, rows = axis_tiles(h, tile, margin) if tile else (h, [(0, h, 0)])
  win_w, cols = axis_tiles(w, tile, margin) if tile else (w, [(0, w, 0)])
  if len(rows) == 1 and len(cols) == 1:
    out = inference.network_forward(params, y[None, :, :, None])
    return np.asarray(out[0, :, :, 0])
  y = np.asarray(y)
  out = np.empty((h, w), np.float32)
  for top, bottom, y0 in rows:
    for left, right, x0 in cols:
      window = y[None, y0:y0 + win_h, x0:x0 + win_w, None]
      res = np.asarray(inference.network_forward(params, window))[0, :, :, 0]
      out[top:bottom, left:right] = res[top - y0:bottom - y0,
                                        left - x0:right - x0]
  return out


def _upscale_one(params: Optional[Any], img: np.ndarray, scale: float,
                 tile: Optional[int]) -> np.ndarray:
  """One (H, W, C) image -> (H', W', C) of the same dtype (no checks)."""
  maxval = _MAX_VALUES.get(img.dtype, 1.0)
  x = img if img.dtype in _MAX_VALUES else img.astype(np.float32)
  planes = _to_planes(x, maxval=maxval)
  y_up, *rest_up = [_resize_plane(p, scale=scale) for p in planes]
  del planes
  if params is not None:
    h, w = y_up.shape
    if tile is None:
      tile = DEFAULT_TILE if h * w > AUTO_TILE_PIXELS else 0
    y_up = _network_y(params, y_up, tile)
  integer = img.dtype in _MAX_VALUES
  out = _finish(y_up, tuple(rest_up), maxval=maxval,
                dtype=img.dtype.name if integer else None)
  out = np.asarray(out)
  return out if integer else out.astype(img.dtype)


def _apply(params: Optional[Any], img: Any, scale: Any, tile: Any) -> Any:
  """Checks arguments, restores layout and array type around _upscale_one."""
  scale = _check_scale(scale)
  tile = _check_tile(tile)
  if params is not None:
    params = jax.tree_util.tree_map(jnp.asarray,
                                    weights_lib.check_params(params))
  a = _check_image(img)
  is_jax = isinstance(img, jax.Array)
  if scale == 1.0:
    out = a.copy()
  else:
    batch = a if a.ndim == 4 else (a[..., None] if a.ndim == 2 else a)[None]
    outs = [_upscale_one(params, im, scale, tile) for im in batch]
    out = np.stack(outs)
    if a.ndim == 2:
      out = out[0, ..., 0]
    elif a.ndim == 3:
      out = out[0]
  return jnp.asarray(out) if is_jax else out


def upscale(params: Any, img: Any, scale: Any, *, tile: Any = None) -> Any:
  """Super-resolves an image (or a batch) by `scale` with VDSR.

  Args:
    params: VDSR parameters (e.g. `weights.load_params(path)`); the depth and
      width are taken from them.
    img: numpy or JAX array (H, W) gray, (H, W, 1), (H, W, 3) RGB, (H, W, 4)
      RGBA, or a batch (N, H, W, C); uint8 (0..255), uint16 (0..65535) or
      float (0..1; computed in float32).
    scale: real factor >= 1; the output is ceil(H * scale) x ceil(W * scale)
      as MATLAB's imresize. 1 returns a copy of `img`.
    tile: None: tile images whose upscaled size exceeds AUTO_TILE_PIXELS
      (about 1 megapixel) in tiles of about DEFAULT_TILE (512) pixels; an int
      N > 0: tiles of about N x N output pixels; 0 or False: never tile;
      True: tiles of DEFAULT_TILE. Tiling changes results only by float
      rounding (< 1e-5).

  Returns:
    The upscaled image in the layout, dtype and array type (numpy / JAX) of
    `img`, clipped to the valid range; integers rounded half away from zero.

  Raises:
    TypeError: `img` or `scale` is of an unsupported type or dtype.
    ValueError: bad shape, empty, NaN / inf, float values outside [0, 1],
      scale < 1 or not finite, or params that are not VDSR (WeightsError).
  """
  return _apply(params, img, scale, tile)


def upscale_bicubic(img: Any, scale: Any) -> Any:
  """`upscale` without the network: MATLAB bicubic of every YCbCr channel.

  The baseline the network improves on, with the same conversions, clipping
  and rounding (useful for comparisons).
  """
  return _apply(None, img, scale, 0)


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command-line flags (once; later calls do nothing)."""
  if 'compare' in flag_values and 'reference' in flag_values:
    return
  flags.DEFINE_float('scale', None, 'Upscaling factor (>= 1, may be '
                     'fractional, e.g. 2, 3, 2.5).', flag_values=flag_values)
  flags.DEFINE_string('weights', None, 'VDSR weights: .mat (the authors\' '
                      'MatConvNet release), .npz (vdsr_jax export), .pth (a '
                      'PyTorch port, read without unpickling) or an orbax '
                      'checkpoint. Default: the shipped weights.',
                      flag_values=flag_values)
  flags.DEFINE_string('output', None, 'Output file (a single input only) or '
                      'folder. Default: next to each input, as '
                      '<stem>_x<scale>.png.', flag_values=flag_values)
  flags.DEFINE_boolean('compare', False, 'Also write <stem>_x<scale>_compare'
                       '.png: bicubic | VDSR (| ground truth).',
                       flag_values=flag_values)
  flags.DEFINE_string('reference', None, 'Ground-truth image (single input) '
                      'or folder of them (matched by file stem): prints the '
                      'Y-channel PSNR and adds a panel to --compare.',
                      flag_values=flag_values)
  flags.DEFINE_integer('tile', None, 'Tile size in output pixels; 0 '
                       'disables tiling. Default: tiles of '
                       f'{DEFAULT_TILE} above {AUTO_TILE_PIXELS} output '
                       'pixels.', flag_values=flag_values)
  flags.mark_flag_as_required('scale', flag_values=flag_values)
  # --help lists the key flags of the main program (named by sys.argv[0]);
  # these are defined here, not there, so declare them for it.
  for name in ('scale', 'weights', 'output', 'compare', 'reference', 'tile'):
    flag_values.register_key_flag_for_module(sys.argv[0], flag_values[name])


def scale_label(scale: float) -> str:
  """'2' for 2.0, '2.5' for 2.5: the x<scale> part of output names."""
  return f'{scale:g}'


def _is_previous_output(path: pathlib.Path, label: str) -> bool:
  stem = path.stem
  return stem.endswith(f'_x{label}') or stem.endswith(f'_x{label}_compare')


def collect_inputs(inputs: Sequence[str],
                   label: str) -> Tuple[List[pathlib.Path], List[str]]:
  """Image files named by `inputs` (files, or folders of image files).

  A folder contributes its image files (sorted, not recursive), except the
  results of an earlier run at the same scale (`*_x<label>.png`,
  `*_x<label>_compare.png`), which would otherwise be upscaled again.

  Returns:
    (files, errors): the files, and one message per input that is missing.
  """
  files, errors = [], []
  for name in inputs:
    path = pathlib.Path(name)
    if path.is_dir():
      files.extend(
          p for p in sorted(path.iterdir())
          if p.is_file() and not p.name.startswith('.') and
          p.suffix.lower() in image_io.IMAGE_SUFFIXES and
          not _is_previous_output(p, label))
    elif path.exists():
      files.append(path)
    else:
      errors.append(f'{path}: no such file or folder.')
  return files, errors


def output_paths(files: Sequence[pathlib.Path], output: Optional[str],
                 label: str) -> List[pathlib.Path]:
  """Where each input's result goes (see the --output flag)."""
  if output is not None:
    out = pathlib.Path(output)
    as_file = (out.suffix.lower() in image_io.IMAGE_SUFFIXES and
               not out.is_dir())
    if as_file:
      if len(files) != 1:
        raise app.UsageError(f'--output={output} names a file but there are '
                             f'{len(files)} inputs; give a folder.')
      return [out]
    return [out / f'{f.stem}_x{label}.png' for f in files]
  return [f.parent / f'{f.stem}_x{label}.png' for f in files]


def compare_path(out: pathlib.Path) -> pathlib.Path:
  """The comparison image written beside output `out`."""
  return out.with_name(f'{out.stem}_compare.png')


def _find_reference(reference: str, image: pathlib.Path,
                    single: bool) -> pathlib.Path:
  ref = pathlib.Path(reference)
  if ref.is_dir():
    for suffix in image_io.IMAGE_SUFFIXES:
      for candidate in (ref / f'{image.stem}{suffix}',
                        ref / f'{image.stem}{suffix.upper()}'):
        if candidate.is_file():
          return candidate
    raise ValueError(f'no reference image {image.stem}.* in {ref}.')
  if not single:
    raise ValueError('--reference must be a folder when there are several '
                     'inputs.')
  if not ref.is_file():
    raise ValueError(f'reference {ref} does not exist.')
  return ref


def _unit_float(img: np.ndarray) -> np.ndarray:
  """uint8 / uint16 image -> float64 in [0, 1], (H, W, C)."""
  a = np.asarray(img, np.float64) / _MAX_VALUES[np.dtype(img.dtype)]
  return a[..., None] if a.ndim == 2 else a


def luminance_255(img: np.ndarray) -> np.ndarray:
  """Y (H, W) on the 0..255 scale (MATLAB rgb2ycbcr, float) of an image."""
  a = _unit_float(img)
  if a.shape[-1] == 1:
    return a[..., 0] * 255.0
  y = a[..., :3] @ np.array([65.481, 128.553, 24.966]) + 16.0
  return y


def _check_reference_size(out_size: Tuple[int, int], ref: np.ndarray,
                          scale: float) -> None:
  """The reference may differ from the output size by at most `scale` px.

  (An HR image whose size is not a multiple of the scale gives a slightly
  larger output after downscaling and upscaling; the common area is used.)
  """
  h, w = out_size
  rh, rw = ref.shape[:2]
  if abs(rh - h) > scale or abs(rw - w) > scale:
    raise ValueError(f'reference is {rh}x{rw} but the output is {h}x{w}.')


def psnr_y(out: np.ndarray, ref: np.ndarray, border: int) -> float:
  """PSNR (dB) of the Y channels over the common top-left area, shaved."""
  from vdsr_jax import metrics  # pylint: disable=g-import-not-at-top
  a, b = luminance_255(out), luminance_255(ref)
  h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
  return metrics.psnr(a[:h, :w], b[:h, :w], border=border)


def _display_rgb8(img: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
  """Any output / reference image -> uint8 RGB of `size`, alpha over white."""
  a = _unit_float(img)
  if a.shape[-1] == 4:
    a = a[..., :3] * a[..., 3:] + (1.0 - a[..., 3:])
  elif a.shape[-1] == 1:
    a = np.repeat(a, 3, axis=-1)
  canvas = np.ones(size + (3,), np.float64)
  h, w = min(size[0], a.shape[0]), min(size[1], a.shape[1])
  canvas[:h, :w] = a[:h, :w]
  return inference.to_uint8(canvas)


def compare_image(panels: Sequence[Tuple[str, np.ndarray]]) -> np.ndarray:
  """Panels side by side with a caption strip under each (PIL default font)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageDraw  # pylint: disable=g-import-not-at-top
  from PIL import ImageFont  # pylint: disable=g-import-not-at-top
  h, w = panels[0][1].shape[:2]
  gap = 4
  font_size = max(12, min(48, w // 24))
  try:
    font = ImageFont.load_default(size=font_size)
  except (TypeError, ImportError, OSError):  # Pillow without FreeType.
    font = ImageFont.load_default()
  strip = int(font_size * 1.6)
  width = len(panels) * w + (len(panels) - 1) * gap
  canvas = Image.new('RGB', (width, h + strip), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for i, (caption, img) in enumerate(panels):
    x = i * (w + gap)
    canvas.paste(Image.fromarray(_display_rgb8(img, (h, w))), (x, 0))
    draw.text((x + 4, h + strip // 5), caption, fill=(0, 0, 0), font=font)
  return np.asarray(canvas)


def _process(params: Any, path: pathlib.Path, out_path: pathlib.Path,
             scale: float, tile: Optional[int], compare: bool,
             reference: Optional[str], single: bool) -> Optional[str]:
  """Upscales one file; returns a result line (PSNR) or None."""
  img = image_io.read_image(path)
  ref = ref_path = None
  if reference:
    ref_path = _find_reference(reference, path, single)
    ref = image_io.read_image(ref_path)
    out_size = tuple(image_ops.output_size(n, scale) for n in img.shape[:2])
    _check_reference_size(out_size, ref, scale)
  out = upscale(params, img, scale, tile=tile)
  image_io.write_image(out_path, out)
  if ref is None and not compare:
    return None
  border = int(math.ceil(scale))
  bicubic = upscale_bicubic(img, scale)
  line = None
  if ref is not None:
    p_bic, p_vdsr = psnr_y(bicubic, ref, border), psnr_y(out, ref, border)
    line = (f'{path}: PSNR (Y) bicubic {p_bic:.2f} dB, VDSR {p_vdsr:.2f} dB '
            f'(vs {ref_path})')
  if compare:
    if ref is None:
      panels = [('bicubic', bicubic), ('VDSR', out)]
    else:
      panels = [(f'bicubic {p_bic:.2f} dB', bicubic),
                (f'VDSR {p_vdsr:.2f} dB', out), ('ground truth', ref)]
    image_io.write_image(compare_path(out_path), compare_image(panels))
  return line


def main(argv: Sequence[str]) -> int:
  """Upscales the images named in argv[1:] (see the module doc and flags)."""
  flag_values = flags.FLAGS
  if not flag_values['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # No INFO chatter from JAX.
  inputs = list(argv[1:])
  if not inputs:
    raise app.UsageError('Give at least one input image or folder.')
  try:
    scale = _check_scale(flag_values.scale)
  except (TypeError, ValueError) as e:
    raise app.UsageError(f'--scale: {e}') from None
  if flag_values.tile is not None and flag_values.tile < 0:
    raise app.UsageError('--tile must be >= 0 (0 disables tiling).')
  label = scale_label(scale)
  files, failures = collect_inputs(inputs, label)
  for message in failures:
    print(f'error: {message}', file=sys.stderr)
  outputs = output_paths(files, flag_values.output, label)
  try:
    if flag_values.weights:
      params = weights_lib.load_params(flag_values.weights)
    else:
      params = weights_lib.load_pretrained()
  except weights_lib.WeightsError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  protected = {os.path.realpath(f) for f in files}
  written = set()
  failed = len(failures)
  bar = tqdm.tqdm(list(zip(files, outputs)), desc=f'upscale x{label}',
                  unit='image', disable=len(files) < 2 or None)
  for path, out_path in bar:
    try:
      targets = [out_path] + ([compare_path(out_path)]
                              if flag_values.compare else [])
      for target in targets:
        real = os.path.realpath(target)
        if real in protected:
          raise ValueError(f'output {target} would overwrite an input file.')
        if real in written:
          raise ValueError(f'output {target} was already written by another '
                           'input (same file name).')
      line = _process(params, path, out_path, scale, flag_values.tile,
                      flag_values.compare, flag_values.reference,
                      single=len(files) == 1)
      written.update(os.path.realpath(t) for t in targets)
      if line:
        tqdm.tqdm.write(line, file=sys.stdout)
    except (ValueError, TypeError, OSError) as e:
      failed += 1
      message = str(e) if str(path) in str(e) else f'{path}: {e}'
      tqdm.tqdm.write(f'error: {message}', file=sys.stderr)
  return 1 if failed else 0


USAGE = """Upscale image files with VDSR.

  vdsr-upscale INPUT... --scale=S [--weights=PATH] [--output=PATH_OR_DIR]
      [--compare] [--reference=PATH] [--tile=N]
  (or python -m vdsr_jax.upscale ...)

INPUT: image files or folders of them. Each result is written atomically as
<stem>_x<S>.png next to its input, or into --output; an input file is never
overwritten. Unreadable files are reported and skipped; the exit status is 1
if any input failed.
"""


def run_main() -> None:
  """Console-script entry point (`vdsr-upscale`)."""
  # absl prints the main module's docstring as the usage (--help, flag
  # errors): the console script's generated module or vdsr_jax/upscale.py.
  sys.modules['__main__'].__doc__ = USAGE
  define_flags()
  app.run(main)
