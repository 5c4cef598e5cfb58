"""Reading and writing image files as numpy arrays, with Pillow.

`read_image` returns uint8 (8-bit files) or uint16 (16-bit files) arrays of
shape (H, W) for grayscale, (H, W, 3) for RGB and (H, W, 4) for RGBA, with the
EXIF orientation applied. Palette images become RGB (RGBA when the palette has
transparency), gray + alpha becomes RGBA, CMYK becomes RGB.

16-bit colour PNGs: Pillow 13 decodes 16-bit RGB / RGBA / gray+alpha PNGs to
8 bits per channel (it has no 16-bit colour mode). Such files are decoded a
second time by Pillow's own PNG decoder with an unpacker that keeps the low
bytes, so the full 16 bits come back (checked against Pillow's 8-bit decode;
this uses Pillow's tile list, so if a future Pillow refuses it the file is
read at 8 bits with a warning). Other 16-bit colour files (e.g. TIFF) are
read at 8 bits with a warning.

`write_image` writes atomically (`atomic.write`), so a reader never sees a
half-written file and an interrupted write leaves the previous file intact.
uint16 arrays are written as 16-bit PNGs (colour ones by a small encoder
here, since Pillow cannot).
"""

import os
import pathlib
import struct
import warnings
import zlib
from typing import Union

import numpy as np
from PIL import Image
from PIL import ImageOps

from vdsr_jax import atomic

PathLike = Union[str, os.PathLike]

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')

# Modes Pillow reads as 16-bit grayscale.
_GRAY16_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N')
# Unpackers of the 16-bit colour PNG modes that take the high byte, and the
# ones with the same bits per pixel that expose the low byte instead.
_LOW_BYTE_RAWMODES = {'RGB;16B': 'RGB;16L', 'RGBA;16B': 'RGBA;16L',
                      'LA;16B': 'RGBA'}


class ImageReadError(ValueError):
  """An image file is missing, unreadable, corrupt or of an unusual kind."""


def _rawmode(im: Image.Image) -> str:
  """The raw mode of the file's first tile, or '' (before loading)."""
  tiles = getattr(im, 'tile', None) or []
  if not tiles:
    return ''
  args = tiles[0].args
  if isinstance(args, tuple):
    args = args[0] if args else ''
  return args if isinstance(args, str) else ''


def _png16_colour(path: pathlib.Path, high: np.ndarray) -> np.ndarray:
  """Re-decodes a 16-bit colour PNG keeping the low bytes; returns uint16."""
  with Image.open(path) as im:
    rawmode = _rawmode(im)
    tile = im.tile[0]
    args = _LOW_BYTE_RAWMODES[rawmode]
    im.tile = [tile._replace(args=args)]
    im.load()
    im = ImageOps.exif_transpose(im)
    low = np.asarray(im)
  if rawmode == 'LA;16B':
    # The 'RGBA' unpacker returned the bytes (L hi, L lo, A hi, A lo) as is.
    gray = low[..., 0].astype(np.uint16) << 8 | low[..., 1]
    alpha = low[..., 2].astype(np.uint16) << 8 | low[..., 3]
    if (not np.array_equal(low[..., 0], high[..., 0]) or
        not np.array_equal(low[..., 2], high[..., 3])):
      raise ImageReadError(f'{path}: inconsistent 16-bit decode.')
    return np.stack([gray, gray, gray, alpha], axis=-1)
  if low.shape != high.shape:
    raise ImageReadError(f'{path}: inconsistent 16-bit decode.')
  return high.astype(np.uint16) << 8 | low


def _to_array(im: Image.Image, path: pathlib.Path) -> np.ndarray:
  """Converts a loaded, oriented Pillow image to the documented layouts."""
  mode = im.mode
  if mode in _GRAY16_MODES:
    return np.asarray(im).astype(np.uint16)
  if mode == 'I':
    a = np.asarray(im)
    if a.size and (a.min() < 0 or a.max() > 65535):
      raise ImageReadError(f'{path}: 32-bit integer image with values outside '
                           '0..65535 is not supported.')
    return a.astype(np.uint16)
  if mode == 'F':
    raise ImageReadError(f'{path}: floating-point images (mode F) are not '
                         'supported; save it as 8- or 16-bit.')
  if mode in ('L', 'RGB', 'RGBA'):
    return np.asarray(im)
  if mode == '1':
    return np.asarray(im.convert('L'))
  if mode == 'P':
    has_alpha = ('transparency' in im.info or
                 im.palette is not None and im.palette.mode == 'RGBA')
    return np.asarray(im.convert('RGBA' if has_alpha else 'RGB'))
  if mode in ('LA', 'La', 'PA', 'RGBa'):
    return np.asarray(im.convert('RGBA'))
  try:
    return np.asarray(im.convert('RGB'))
  except (ValueError, OSError) as e:
    raise ImageReadError(f'{path}: unsupported image mode {mode!r} '
                         f'({e}).') from None


def read_image(path: PathLike) -> np.ndarray:
  """Reads an image file into a uint8 or uint16 array (see module doc).

  Raises:
    ImageReadError: the file is missing, not an image, truncated or corrupt,
      or of a kind this reader does not handle; the message names the file.
  """
  path = pathlib.Path(path)
  try:
    with Image.open(path) as im:
      rawmode = _rawmode(im)
      colour16 = im.mode in ('RGB', 'RGBA') and ';16' in rawmode
      im.load()
      oriented = ImageOps.exif_transpose(im)
      array = _to_array(oriented, path)
      is_png = im.format == 'PNG'
    if colour16:
      if is_png and rawmode in _LOW_BYTE_RAWMODES:
        try:
          return _png16_colour(path, array)
        except Exception as e:  # A Pillow whose decoder internals changed.
          reason = f'the 16-bit decode failed: {e}'
      else:
        reason = 'Pillow has no 16-bit colour mode for this format'
      warnings.warn(f'{path}: 16-bit colour image read at 8 bits per channel '
                    f'({reason}).')
    return array
  except ImageReadError:
    raise
  except FileNotFoundError:
    raise ImageReadError(f'{path}: no such file.') from None
  except IsADirectoryError:
    raise ImageReadError(f'{path}: is a directory, not an image.') from None
  except Image.DecompressionBombError as e:
    raise ImageReadError(f'{path}: image too large ({e}).') from None
  except Exception as e:  # Pillow raises many types for damaged files.
    raise ImageReadError(f'{path}: cannot read image '
                         f'({type(e).__name__}: {e}).') from None


def _png_chunk(kind: bytes, data: bytes) -> bytes:
  crc = zlib.crc32(kind + data) & 0xFFFFFFFF
  return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', crc)


def encode_png16(array: np.ndarray) -> bytes:
  """A 16-bit PNG (gray, RGB or RGBA) of a uint16 (H, W[, C]) array.

  Rows use PNG filter 1 ('Sub'), which costs one vectorised difference and
  compresses smooth images well.
  """
  a = np.asarray(array, np.uint16)
  if a.ndim == 2:
    a = a[..., None]
  h, w, c = a.shape
  colour_type = {1: 0, 3: 2, 4: 6}[c]
  raw = a.astype('>u2').view(np.uint8).reshape(h, w * c * 2)
  bpp = 2 * c
  filtered = raw.copy()
  filtered[:, bpp:] -= raw[:, :-bpp]  # Sub: modulo-256 byte differences.
  rows = np.concatenate([np.ones((h, 1), np.uint8), filtered], axis=1)
  header = struct.pack('>IIBBBBB', w, h, 16, colour_type, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', header) +
          _png_chunk(b'IDAT', zlib.compress(rows.tobytes(), 6)) +
          _png_chunk(b'IEND', b''))


def _pil_format(path: pathlib.Path) -> str:
  suffix = path.suffix.lower()
  fmt = Image.registered_extensions().get(suffix)
  if fmt is None:
    raise ValueError(f'{path}: unknown image file suffix {suffix!r}; use one '
                     f'of {", ".join(IMAGE_SUFFIXES)}.')
  return fmt


def write_image(path: PathLike, array) -> None:
  """Writes a uint8 / uint16 (H, W), (H, W, 1|3|4) array, atomically.

  The format follows the suffix. uint16 needs PNG (or TIFF for grayscale);
  JPEG takes no alpha channel.

  Raises:
    TypeError: the dtype is not uint8 or uint16.
    ValueError: the shape or the format does not fit.
  """
  path = pathlib.Path(path)
  a = np.asarray(array)
  if a.dtype not in (np.uint8, np.uint16):
    raise TypeError(f'write_image takes uint8 or uint16 arrays, got {a.dtype}.')
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if not (a.ndim == 2 or a.ndim == 3 and a.shape[-1] in (3, 4)):
    raise ValueError(f'write_image takes (H, W) or (H, W, 1|3|4) arrays, got '
                     f'shape {np.shape(array)}.')
  if a.size == 0:
    raise ValueError(f'write_image: empty image of shape {a.shape}.')
  fmt = _pil_format(path)
  data = image = None
  if a.dtype == np.uint16 and fmt == 'PNG' and a.ndim == 3:
    data = encode_png16(a)
  elif a.dtype == np.uint16:
    if fmt not in ('PNG', 'TIFF') or a.ndim == 3:
      raise ValueError(f'{path}: 16-bit images can be written as PNG (or as '
                       f'TIFF when grayscale), not as {fmt}.')
    image = Image.fromarray(a)  # (H, W) uint16 -> mode 'I;16'.
  else:
    if fmt == 'JPEG' and a.ndim == 3 and a.shape[-1] == 4:
      raise ValueError(f'{path}: JPEG has no alpha channel; use PNG.')
    image = Image.fromarray(a)
  with atomic.write(path) as f:
    if data is not None:
      f.write(data)
    else:
      image.save(f, format=fmt)
