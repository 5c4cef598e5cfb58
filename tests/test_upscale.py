"""Tests of vdsr_jax.upscaling (the upscale API and CLI) and vdsr_jax.image_io.

Most tests use a tiny random VDSR (depth 3, 4 filters) on small images; one
test runs the authors' weights on a Set5 crop.
"""

import contextlib
import logging
import math
import os
import pathlib
import struct
import subprocess
import sys
import types
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from vdsr_jax import evaluation
from vdsr_jax import image_io
from vdsr_jax import image_ops
from vdsr_jax import inference
from vdsr_jax import models
from vdsr_jax import upscaling
from vdsr_jax import weights as weights_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tiny_params():
  return models.init_params(jax.random.PRNGKey(0),
                            models.VDSR(depth=3, features=4))


def random_image(shape, dtype, seed=0):
  x = np.random.RandomState(seed).rand(*shape)
  if np.dtype(dtype) in (np.uint8, np.uint16):
    return np.floor(x * (np.iinfo(dtype).max + 1)).astype(dtype)
  return x.astype(dtype)


def smooth_rgb(h, w, seed=0):
  """A smooth uint8 RGB image (low-frequency), so bicubic stays in range."""
  rs = np.random.RandomState(seed)
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  chans = [0.5 + 0.3 * np.sin(2 * np.pi * (rs.rand() * yy + rs.rand() * xx) +
                              rs.rand() * 6) for _ in range(3)]
  return np.floor(np.stack(chans, -1) * 255 + 0.5).astype(np.uint8)


def shifted_params(depth, features, shift):
  """VDSR params whose residual is the constant `shift` (output = Y + c)."""
  params = {}
  for i in range(depth):
    cin = 1 if i == 0 else features
    cout = 1 if i == depth - 1 else features
    params[f'conv{i}'] = {
        'kernel': np.zeros((3, 3, cin, cout), np.float32),
        'bias': np.full((cout,), shift if i == depth - 1 else 0, np.float32)}
  return params


class CompileLog(logging.Handler):
  """Collects JAX's 'Compiling ...' log lines (jax.log_compiles)."""

  def __init__(self):
    super().__init__(level=logging.DEBUG)
    self.lines = []

  def emit(self, record):
    message = record.getMessage()
    if message.startswith('Compiling'):
      self.lines.append(message)


@contextlib.contextmanager
def compile_log():
  handler = CompileLog()
  logger = logging.getLogger('jax')
  logger.addHandler(handler)
  try:
    with jax.log_compiles(True):
      yield handler
  finally:
    logger.removeHandler(handler)


# ----------------------------------------------------------------------------
# Layouts, dtypes, sizes
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('shape', [(9, 11), (9, 11, 1), (9, 11, 3),
                                   (9, 11, 4), (2, 9, 11, 3), (2, 9, 11, 1)])
@pytest.mark.parametrize('dtype', [np.uint8, np.uint16, np.float32,
                                   np.float64, np.float16])
def test_layouts_and_dtypes(tiny_params, shape, dtype):
  img = random_image(shape, dtype)
  out = upscaling.upscale(tiny_params, img, 2)
  expected = list(shape)
  expected[-3 if len(shape) >= 3 else 0] *= 2
  expected[-2 if len(shape) >= 3 else 1] *= 2
  assert isinstance(out, np.ndarray)
  assert out.shape == tuple(expected)
  assert out.dtype == np.dtype(dtype)
  if np.dtype(dtype).kind == 'f':
    assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1


def test_jax_array_in_jax_array_out(tiny_params):
  img = jnp.asarray(random_image((8, 10, 3), np.float32))
  out = upscaling.upscale(tiny_params, img, 2)
  assert isinstance(out, jax.Array)
  assert out.shape == (16, 20, 3) and out.dtype == jnp.float32
  ref = upscaling.upscale(tiny_params, np.asarray(img), 2)
  np.testing.assert_array_equal(np.asarray(out), ref)


def test_gray_layouts_and_batch_agree(tiny_params):
  img = random_image((2, 9, 11, 1), np.uint8)
  batch = upscaling.upscale(tiny_params, img, 3)
  for i in range(2):
    np.testing.assert_array_equal(
        upscaling.upscale(tiny_params, img[i, ..., 0], 3), batch[i, ..., 0])
    np.testing.assert_array_equal(
        upscaling.upscale(tiny_params, img[i], 3), batch[i])


def test_dtypes_agree(tiny_params):
  """uint8, uint16 and float inputs of the same picture agree."""
  u8 = random_image((9, 11, 3), np.uint8)
  f = upscaling.upscale(tiny_params, u8.astype(np.float32) / 255, 2)
  # The integer and float paths may round an exact .5 differently after
  # float32 rounding of the input scaling: allow one level on a few pixels.
  diff = np.abs(upscaling.upscale(tiny_params, u8, 2).astype(int) -
                inference.to_uint8(f).astype(int))
  assert diff.max() <= 1 and np.mean(diff > 0) < 0.01
  u16 = u8.astype(np.uint16) * 257  # The same values on the 16-bit scale.
  out16 = upscaling.upscale(tiny_params, u16, 2).astype(np.float64) / 65535
  np.testing.assert_allclose(out16, f, atol=1e-5)


@pytest.mark.parametrize('scale', [1.5, 2.5, 3, 1.1, 4.0])
def test_non_integer_scales(tiny_params, scale):
  img = random_image((7, 10, 3), np.uint8)
  out = upscaling.upscale(tiny_params, img, scale)
  assert out.shape == (math.ceil(7 * scale), math.ceil(10 * scale), 3)


@pytest.mark.parametrize('img', [random_image((5, 6, 3), np.uint8),
                                 random_image((5, 6), np.float32),
                                 random_image((2, 5, 6, 4), np.uint16)])
def test_scale_one_is_identity(tiny_params, img):
  out = upscaling.upscale(tiny_params, img, 1)
  assert out.dtype == img.dtype
  np.testing.assert_array_equal(out, img)
  assert out is not img


# ----------------------------------------------------------------------------
# Colour path
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('shift', [0.0, 0.05])
def test_colour_path_network_sees_only_y(shift):
  """A network adding c to Y gives ycbcr2rgb(bicubic Y + c, bicubic CbCr)."""
  params = shifted_params(3, 4, shift)
  img = smooth_rgb(12, 14)
  out = upscaling.upscale(params, img, 2)
  ycc = image_ops.rgb2ycbcr(img.astype(np.float32) / 255)
  up = np.asarray(image_ops.imresize(ycc, 2))
  y = np.clip(up[..., :1] + shift, 0, 1)
  rgb = np.clip(np.asarray(image_ops.ycbcr2rgb(
      np.concatenate([y, up[..., 1:]], -1))), 0, 1)
  expected = np.floor(rgb * 255 + 0.5).astype(np.uint8)
  # jit may order float operations differently from the eager reference.
  diff = np.abs(out.astype(int) - expected)
  assert diff.max() <= 1 and np.mean(diff > 0) < 0.01
  if shift == 0:
    np.testing.assert_array_equal(out, upscaling.upscale_bicubic(img, 2))


def test_rgba_alpha_is_bicubic(tiny_params):
  img = random_image((9, 10, 4), np.uint8)
  out = upscaling.upscale(tiny_params, img, 2)
  np.testing.assert_array_equal(out[..., :3],
                                upscaling.upscale(tiny_params, img[..., :3], 2))
  alpha = np.asarray(image_ops.imresize(img[..., 3].astype(np.float32) / 255,
                                        2))
  expected = inference.to_uint8(np.clip(alpha, 0, 1))
  assert np.abs(out[..., 3].astype(int) - expected).max() <= 1


def test_gray_matches_evaluation_protocol_official_weights(datasets_dir,
                                                           reference_dir):
  params = weights_lib.load_params(reference_dir / 'VDSR_Official.mat')
  hr = image_io.read_image(datasets_dir / 'Set5' / 'butterfly.png')
  hr = hr[64:144, 96:176]  # 80x80 crop with edges.
  # Gray: the float LR of the protocol gives exactly the protocol's Y.
  hr_y = evaluation.luminance_uint8(hr)
  lr, _ = evaluation.degrade(hr_y, 2)
  expected = evaluation.super_resolve_y(hr_y, 2, 'vdsr', params)
  out = upscaling.upscale(params, lr, 2, tile=0)
  np.testing.assert_array_equal(inference.to_uint8(out), expected)
  # Colour: VDSR beats bicubic on the Y channel by a clear margin.
  lr_rgb = np.asarray(image_ops.imresize(hr, 0.5))
  vdsr = upscaling.upscale(params, lr_rgb, 2)
  bicubic = upscaling.upscale_bicubic(lr_rgb, 2)
  p_vdsr = upscaling.psnr_y(vdsr, hr, 2)
  p_bic = upscaling.psnr_y(bicubic, hr, 2)
  assert p_vdsr > p_bic + 2.0, (p_vdsr, p_bic)
  # 4x4 tiles of the 20-layer network (margin 20) give the same image.
  tiled = upscaling.upscale(params, lr_rgb.astype(np.float32) / 255, 2,
                            tile=16)
  whole = upscaling.upscale(params, lr_rgb.astype(np.float32) / 255, 2,
                            tile=0)
  np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------
# Tiling and compilation
# ----------------------------------------------------------------------------


def spy_forward(monkeypatch):
  """Records the input shape of every inference.network_forward call."""
  shapes = []
  forward = inference.network_forward

  def spy(p, x, **kwargs):
    shapes.append(tuple(x.shape))
    return forward(p, x, **kwargs)

  monkeypatch.setattr(inference, 'network_forward', spy)
  return shapes


@pytest.mark.parametrize('depth,shape,tile,n_tiles', [
    (3, (50, 70), 16, 4 * 6),
    (3, (2, 33, 21, 3), 24, 2 * 3 * 2),
    (20, (40, 50, 4), 8, 4 * 5),
])
def test_tiled_equals_untiled(monkeypatch, depth, shape, tile, n_tiles):
  params = models.init_params(jax.random.PRNGKey(depth),
                              models.VDSR(depth=depth, features=4))
  img = random_image(shape, np.float32, seed=depth)
  whole = upscaling.upscale(params, img, 2, tile=0)
  shapes = spy_forward(monkeypatch)
  tiled = upscaling.upscale(params, img, 2, tile=tile)
  assert len(shapes) == n_tiles and len(set(shapes)) == 1
  np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize('length,tile,margin', [
    (1000, 300, 20), (2160, 512, 20), (3840, 512, 20), (101, 16, 3),
    (64, 16, 20), (40, 64, 3), (33, 32, 3)])
def test_axis_tiles(length, tile, margin):
  window, tiles = upscaling.axis_tiles(length, tile, margin)
  covered = np.zeros(length, int)
  for start, end, offset in tiles:
    covered[start:end] += 1
    assert 0 <= offset and offset + window <= length
    assert offset <= max(start - margin, 0)
    assert offset + window >= min(end + margin, length)
  np.testing.assert_array_equal(covered, 1)
  if len(tiles) > 1:
    assert window % inference.DEFAULT_BUCKET == 0
    assert window <= tile + 2 * margin + inference.DEFAULT_BUCKET
    assert len(tiles) <= -(-length // tile)
  else:
    assert window == length


def test_tiles_share_one_compiled_network(monkeypatch):
  # A fresh architecture (5 filters), so its first compilation is seen.
  params = models.init_params(jax.random.PRNGKey(1),
                              models.VDSR(depth=3, features=5))
  shapes = spy_forward(monkeypatch)
  img = random_image((45, 29), np.float32)
  with compile_log() as log:
    upscaling.upscale(params, img, 2, tile=20)
  assert len(shapes) == 4 * 3 and len(set(shapes)) == 1, shapes
  network = [line for line in log.lines if 'jit(forward)' in line]
  assert len(network) == 1, network


def test_automatic_tiling(monkeypatch, tiny_params):
  img = random_image((20, 24, 3), np.float32)
  whole = upscaling.upscale(tiny_params, img, 2, tile=0)
  shapes = spy_forward(monkeypatch)
  upscaling.upscale(tiny_params, img, 2)
  assert len(shapes) == 1  # 40x48 is below AUTO_TILE_PIXELS.
  monkeypatch.setattr(upscaling, 'AUTO_TILE_PIXELS', 1000)
  monkeypatch.setattr(upscaling, 'DEFAULT_TILE', 16)
  shapes.clear()
  auto = upscaling.upscale(tiny_params, img, 2)
  assert len(shapes) > 1
  np.testing.assert_allclose(auto, whole, atol=1e-5, rtol=0)
  shapes.clear()
  upscaling.upscale(tiny_params, img, 2, tile=False)
  assert len(shapes) == 1


def test_second_call_does_not_recompile(tiny_params):
  first = random_image((13, 17, 3), np.uint8, seed=1)
  second = random_image((13, 17, 3), np.uint8, seed=2)
  upscaling.upscale(tiny_params, first, 2)
  with compile_log() as log:
    upscaling.upscale(tiny_params, second, 2)
  assert not log.lines, log.lines
  # Another size in the same 32-pixel bucket reuses the compiled network.
  with compile_log() as log:
    upscaling.upscale(tiny_params, random_image((14, 15, 3), np.uint8), 2)
  assert not [line for line in log.lines if 'jit(forward)' in line]


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('img,error,match', [
    (np.zeros(5, np.uint8), ValueError, 'shape'),
    (np.zeros((1, 2, 3, 4, 3), np.uint8), ValueError, 'shape'),
    (np.zeros((4, 4, 2), np.uint8), ValueError, '2 channels'),
    (np.zeros((2, 4, 4, 5), np.uint8), ValueError, '5 channels'),
    (np.zeros((0, 4, 3), np.uint8), ValueError, 'empty'),
    (np.full((4, 4), np.nan, np.float32), ValueError, 'NaN'),
    (np.full((4, 4), np.inf, np.float32), ValueError, 'NaN or infinite'),
    (np.full((4, 4), 2.0, np.float32), ValueError, r'\[0, 1\]'),
    (np.full((4, 4), 255.0), ValueError, r'\[0, 1\]'),
    (np.full((4, 4), -0.01, np.float32), ValueError, r'\[0, 1\]'),
    (np.zeros((4, 4), np.int32), TypeError, 'dtype int32'),
    (np.zeros((4, 4), bool), TypeError, 'dtype bool'),
    (np.zeros((4, 4), np.complex64), TypeError, 'dtype complex64'),
    ([[0.5, 0.5]], TypeError, 'array'),
])
def test_bad_images(tiny_params, img, error, match):
  with pytest.raises(error, match=match):
    upscaling.upscale(tiny_params, img, 2)


def test_float_tolerance(tiny_params):
  img = np.full((4, 4), 1 + 5e-7, np.float32)
  img[0, 0] = -5e-7
  out = upscaling.upscale(tiny_params, img, 2)
  assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize('scale,error,match', [
    (0.5, ValueError, '>= 1'),
    (0, ValueError, '>= 1'),
    (-2, ValueError, '>= 1'),
    (float('nan'), ValueError, 'finite'),
    (float('inf'), ValueError, 'finite'),
    ('2', TypeError, 'real number'),
    (None, TypeError, 'real number'),
    (True, TypeError, 'bool'),
    (2 + 0j, TypeError, 'real number'),
])
def test_bad_scales(tiny_params, scale, error, match):
  with pytest.raises(error, match=match):
    upscaling.upscale(tiny_params, np.zeros((4, 4), np.uint8), scale)


def test_numpy_and_jax_scalar_scales(tiny_params):
  img = np.zeros((4, 4), np.uint8)
  assert upscaling.upscale(tiny_params, img, np.float32(2)).shape == (8, 8)
  assert upscaling.upscale(tiny_params, img, jnp.asarray(2.5)).shape == (10, 10)


def test_bad_params_and_tile(tiny_params):
  img = np.zeros((4, 4), np.uint8)
  bad = dict(tiny_params)
  del bad['conv1']
  with pytest.raises(weights_lib.WeightsError, match='conv0..conv'):
    upscaling.upscale(bad, img, 2)
  with pytest.raises(ValueError, match='got list'):
    upscaling.upscale([1, 2], img, 2)
  wrong = jax.tree_util.tree_map(lambda a: a, dict(tiny_params))
  wrong['conv1'] = {'kernel': np.zeros((3, 3, 4, 7), np.float32),
                    'bias': np.zeros((7,), np.float32)}
  with pytest.raises(ValueError, match='conv1'):
    upscaling.upscale(wrong, img, 2)
  with pytest.raises(ValueError, match='tile'):
    upscaling.upscale(tiny_params, img, 2, tile=-1)
  with pytest.raises(TypeError, match='tile'):
    upscaling.upscale(tiny_params, img, 2, tile=16.5)


def test_package_attribute_is_not_the_cli_module():
  import vdsr_jax  # pylint: disable=g-import-not-at-top
  attr = getattr(vdsr_jax, 'upscale', None)
  assert not isinstance(attr, types.ModuleType)
  if attr is not None:
    assert attr is upscaling.upscale


# ----------------------------------------------------------------------------
# image_io
# ----------------------------------------------------------------------------


def png_bytes(array, colour_type, bit_depth=16):
  """A PNG written by hand (filter 0), for kinds Pillow cannot write."""
  a = np.asarray(array)
  a = a[..., None] if a.ndim == 2 else a
  h, w = a.shape[:2]
  raw = a.astype('>u2' if bit_depth == 16 else 'u1').tobytes()
  rows = b''.join(b'\x00' + raw[i * len(raw) // h:(i + 1) * len(raw) // h]
                  for i in range(h))

  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF))

  header = struct.pack('>IIBBBBB', w, h, bit_depth, colour_type, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) +
          chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))


@pytest.mark.parametrize('shape', [(13, 17), (13, 17, 3), (13, 17, 4)])
@pytest.mark.parametrize('dtype', [np.uint8, np.uint16])
def test_png_round_trip(tmp_path, shape, dtype):
  img = random_image(shape, dtype)
  path = tmp_path / 'a.png'
  image_io.write_image(path, img)
  back = image_io.read_image(path)
  assert back.dtype == np.dtype(dtype)
  np.testing.assert_array_equal(back, img)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a.png']
  if dtype == np.uint16 and len(shape) == 2:
    assert Image.open(path).mode.startswith('I;16')


def test_16bit_colour_png_written_elsewhere(tmp_path):
  """16-bit RGB / RGBA / gray+alpha PNGs (unfiltered) keep all 16 bits."""
  rgb = random_image((6, 7, 3), np.uint16)
  (tmp_path / 'rgb.png').write_bytes(png_bytes(rgb, 2))
  np.testing.assert_array_equal(image_io.read_image(tmp_path / 'rgb.png'), rgb)
  rgba = random_image((6, 7, 4), np.uint16)
  (tmp_path / 'rgba.png').write_bytes(png_bytes(rgba, 6))
  np.testing.assert_array_equal(image_io.read_image(tmp_path / 'rgba.png'),
                                rgba)
  la = random_image((6, 7, 2), np.uint16)
  (tmp_path / 'la.png').write_bytes(png_bytes(la, 4))
  back = image_io.read_image(tmp_path / 'la.png')
  assert back.dtype == np.uint16 and back.shape == (6, 7, 4)
  for c in range(3):
    np.testing.assert_array_equal(back[..., c], la[..., 0])
  np.testing.assert_array_equal(back[..., 3], la[..., 1])


def test_palette_images(tmp_path):
  indices = np.random.RandomState(0).randint(0, 4, (9, 8)).astype(np.uint8)
  palette = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255], [10, 20, 30]],
                     np.uint8)
  im = Image.fromarray(indices, mode='P')
  im.putpalette(palette.ravel().tolist())
  im.save(tmp_path / 'p.png')
  np.testing.assert_array_equal(image_io.read_image(tmp_path / 'p.png'),
                                palette[indices])
  im.save(tmp_path / 'pt.png', transparency=0)
  back = image_io.read_image(tmp_path / 'pt.png')
  assert back.shape == (9, 8, 4)
  np.testing.assert_array_equal(back[..., :3], palette[indices])
  np.testing.assert_array_equal(back[..., 3], np.where(indices == 0, 0, 255))


def test_exif_rotated_jpeg(tmp_path):
  img = np.zeros((24, 40, 3), np.uint8)
  img[:12, :20] = 255  # Bright top-left quadrant.
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
  Image.fromarray(img).save(tmp_path / 'r.jpg', exif=exif, quality=95)
  back = image_io.read_image(tmp_path / 'r.jpg')
  assert back.shape == (40, 24, 3)
  expected = np.rot90(img, k=-1)
  assert np.mean(np.abs(back.astype(int) - expected)) < 4


def test_gray_jpeg_and_bmp(tmp_path):
  gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (6, 1))
  Image.fromarray(gray).save(tmp_path / 'g.jpg', quality=95)
  back = image_io.read_image(tmp_path / 'g.jpg')
  assert back.shape == gray.shape and back.dtype == np.uint8
  rgb = random_image((5, 6, 3), np.uint8)
  image_io.write_image(tmp_path / 'c.bmp', rgb)
  np.testing.assert_array_equal(image_io.read_image(tmp_path / 'c.bmp'), rgb)


def test_unreadable_files(tmp_path):
  (tmp_path / 'junk.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really')
  with pytest.raises(image_io.ImageReadError, match='junk.png'):
    image_io.read_image(tmp_path / 'junk.png')
  good = tmp_path / 'good.png'
  image_io.write_image(good, random_image((30, 30, 3), np.uint8))
  (tmp_path / 'cut.png').write_bytes(good.read_bytes()[:200])
  with pytest.raises(image_io.ImageReadError, match='cut.png'):
    image_io.read_image(tmp_path / 'cut.png')
  with pytest.raises(image_io.ImageReadError, match='missing.png'):
    image_io.read_image(tmp_path / 'missing.png')
  assert issubclass(image_io.ImageReadError, ValueError)


def test_write_image_is_atomic(tmp_path, monkeypatch):
  path = tmp_path / 'out.png'
  old = random_image((5, 5, 3), np.uint8, seed=1)
  image_io.write_image(path, old)

  def broken_save(self, fp, *args, **kwargs):
    fp.write(b'partial')
    raise OSError('disk full')

  monkeypatch.setattr(Image.Image, 'save', broken_save)
  with pytest.raises(OSError, match='disk full'):
    image_io.write_image(path, random_image((5, 5, 3), np.uint8, seed=2))
  monkeypatch.undo()
  np.testing.assert_array_equal(image_io.read_image(path), old)
  assert [p.name for p in tmp_path.iterdir()] == ['out.png']


def test_write_image_errors(tmp_path):
  with pytest.raises(TypeError, match='uint8 or uint16'):
    image_io.write_image(tmp_path / 'a.png', np.zeros((4, 4), np.float32))
  with pytest.raises(ValueError, match='16-bit'):
    image_io.write_image(tmp_path / 'a.jpg', np.zeros((4, 4, 3), np.uint16))
  with pytest.raises(ValueError, match='alpha'):
    image_io.write_image(tmp_path / 'a.jpg', np.zeros((4, 4, 4), np.uint8))
  with pytest.raises(ValueError, match='shape'):
    image_io.write_image(tmp_path / 'a.png', np.zeros((4, 4, 2), np.uint8))
  assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------


def run_cli(*args, cwd):
  """Runs `python -m vdsr_jax.upscale ARGS` in a subprocess."""
  path = [str(REPO)] + [p for p in [os.environ.get('PYTHONPATH')] if p]
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join(path))
  command = [sys.executable, '-m', 'vdsr_jax.upscale', *map(str, args)]
  return subprocess.run(command, cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300, check=False)


@pytest.mark.parametrize('console_script', [False, True])
def test_cli_usage_names_the_inputs(tmp_path, console_script):
  if console_script:  # like the generated `vdsr-upscale`: no module doc
    code = ('import sys; from vdsr_jax import upscaling; '
            'sys.argv[0] = "vdsr-upscale"; upscaling.run_main()')
    path = [str(REPO)] + [p for p in [os.environ.get('PYTHONPATH')] if p]
    env = dict(os.environ, JAX_PLATFORMS='cpu',
               PYTHONPATH=os.pathsep.join(path))
    result = subprocess.run([sys.executable, '-c', code, '--help'],
                            cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
  else:
    result = run_cli('--help', cwd=tmp_path)
  # (absl's --help exits with status 1.)
  assert 'vdsr-upscale INPUT... --scale=S' in result.stdout, result.stderr
  assert '--output' in result.stdout


@pytest.fixture
def tiny_weights(tmp_path, tiny_params):
  path = tmp_path / 'tiny.npz'
  weights_lib.save_npz(tiny_params, path)
  return path


def test_cli_folder_with_corrupt_file(tmp_path, tiny_weights, tiny_params):
  folder = tmp_path / 'in'
  folder.mkdir()
  a = random_image((10, 12, 3), np.uint8, seed=1)
  b = random_image((9, 7), np.uint16, seed=2)
  image_io.write_image(folder / 'a.png', a)
  image_io.write_image(folder / 'b.png', b)
  (folder / 'c.png').write_bytes(b'\x89PNG\r\n\x1a\ntruncated')
  (folder / 'notes.txt').write_text('not an image')
  result = run_cli(folder, '--scale=2', f'--weights={tiny_weights}',
                   cwd=tmp_path)
  assert result.returncode == 1, result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'c.png' in errors[0], result.stderr
  assert 'Traceback' not in result.stderr
  assert sorted(p.name for p in folder.iterdir()) == [
      'a.png', 'a_x2.png', 'b.png', 'b_x2.png', 'c.png', 'notes.txt']
  np.testing.assert_array_equal(image_io.read_image(folder / 'a_x2.png'),
                                upscaling.upscale(tiny_params, a, 2))
  out_b = image_io.read_image(folder / 'b_x2.png')
  assert out_b.dtype == np.uint16
  np.testing.assert_array_equal(out_b, upscaling.upscale(tiny_params, b, 2))
  # A second run skips the earlier results and rewrites them.
  image_io.write_image(folder / 'c.png', a)
  result = run_cli(folder, '--scale=2', f'--weights={tiny_weights}',
                   '--output', tmp_path / 'out', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == [
      'a_x2.png', 'b_x2.png', 'c_x2.png']


def test_cli_never_overwrites_input(tmp_path, tiny_weights):
  src = tmp_path / 'pic.png'
  img = random_image((8, 8, 3), np.uint8)
  image_io.write_image(src, img)
  before = src.read_bytes()
  result = run_cli(src, '--scale=2', f'--weights={tiny_weights}',
                   f'--output={src}', cwd=tmp_path)
  assert result.returncode == 1
  assert 'overwrite an input' in result.stderr
  assert src.read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ['pic.png', 'tiny.npz']


def test_cli_compare_reference_fractional_scale(tmp_path, tiny_weights):
  hr = smooth_rgb(30, 25)
  lr = np.asarray(image_ops.imresize(hr, 1 / 2.5))
  image_io.write_image(tmp_path / 'lr.png', lr)
  image_io.write_image(tmp_path / 'hr.png', hr)
  result = run_cli(tmp_path / 'lr.png', '--scale=2.5', '--compare',
                   f'--reference={tmp_path / "hr.png"}', '--tile=16',
                   f'--weights={tiny_weights}', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  out = image_io.read_image(tmp_path / 'lr_x2.5.png')
  assert out.shape == (30, 25, 3)
  compare = image_io.read_image(tmp_path / 'lr_x2.5_compare.png')
  assert compare.shape[1] == 3 * 25 + 2 * 4 and compare.shape[0] > 30
  assert 'PSNR (Y) bicubic' in result.stdout and 'dB' in result.stdout


def test_cli_uses_the_shipped_weights_by_default(tmp_path):
  img = tmp_path / 'x.png'
  image_io.write_image(img, random_image((10, 12, 3), np.uint8))
  result = run_cli(img, '--scale=2', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  outputs = [p for p in tmp_path.iterdir() if p.name != 'x.png']
  assert len(outputs) == 1
  assert image_io.read_image(outputs[0]).shape == (20, 24, 3)


def test_cli_missing_weights_and_inputs(tmp_path):
  img = tmp_path / 'x.png'
  image_io.write_image(img, random_image((6, 6), np.uint8))
  result = run_cli(img, '--scale=2', '--weights=nowhere.npz', cwd=tmp_path)
  assert result.returncode == 1
  assert 'nowhere.npz' in result.stderr and 'Traceback' not in result.stderr
  result = run_cli(img, '--scale=0.5', '--weights=nowhere.npz', cwd=tmp_path)
  assert result.returncode != 0 and '--scale' in result.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ['x.png']
