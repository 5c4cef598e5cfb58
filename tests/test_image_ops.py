"""Tests of the MATLAB-exact image operations against hand-derived values."""

import jax
import numpy as np
import pytest

from vdsr_jax import image_ops


def test_cubic_kernel_values():
  # Keys' kernel with a = -0.5, evaluated by hand.
  x = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, -0.5, -1.5])
  expected = [1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0, 0.5625, -0.0625]
  np.testing.assert_allclose(image_ops.cubic(x), expected, atol=1e-15)


def test_contributions_upscale_x2_first_pixel():
  # Output pixel 1 maps to u = 0.75; taps at 1-based -1, 0, 1, 2 mirror to
  # 0-based 1, 0, 0, 1 with weights cubic(1.75), cubic(.75), cubic(.25),
  # cubic(1.25).
  w, idx = image_ops.contributions(10, 20, 2.0)
  np.testing.assert_allclose(w[0], [-0.0234375, 0.2265625, 0.8671875,
                                    -0.0703125], atol=1e-12)
  np.testing.assert_array_equal(idx[0], [1, 0, 0, 1])
  np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)


def test_contributions_downscale_half_is_antialiased():
  # Shrinking by 2 stretches the kernel to width 8: h(x) = cubic(x/2)/2.
  w, idx = image_ops.contributions(20, 10, 0.5)
  half = np.array([-0.0234375, -0.0703125, 0.2265625, 0.8671875])
  expected = np.concatenate([half, half[::-1]]) / 2
  np.testing.assert_allclose(w[4], expected, atol=1e-12)
  # Output pixel 5 (1-based) is centred on u = 9.5: inputs 6..13, 0-based 5..12.
  np.testing.assert_array_equal(idx[4], np.arange(5, 13))
  w_plain, _ = image_ops.contributions(20, 10, 0.5, antialias=False)
  assert w_plain.shape[1] == 4


def test_imresize_1d_border_value():
  # With the weights above and the symmetric border:
  # out[0] = (0.2265625 + 0.8671875) x0 + (-0.0234375 - 0.0703125) x1.
  x = np.array([[3.0, 7.0, 1.0, 4.0, 2.0]], np.float32)
  out = np.asarray(image_ops.imresize(x, (1.0, 2.0)))
  assert out.shape == (1, 10)
  np.testing.assert_allclose(out[0, 0], 1.09375 * 3 - 0.09375 * 7, rtol=1e-6)


@pytest.mark.parametrize('shape,scale,expected', [
    ((7, 5), 1 / 3, (3, 2)),
    ((7, 5), 1.5, (11, 8)),
    ((9, 13), 2.5, (23, 33)),
    ((255, 256), 1 / 3, (85, 86)),
    ((8, 8), 0.5, (4, 4)),
    ((3, 4), 4, (12, 16)),
])
def test_imresize_output_size_matches_matlab_rule(shape, scale, expected):
  out = image_ops.imresize(np.zeros(shape, np.float32), scale)
  assert out.shape == expected


def test_imresize_output_shape_argument_and_layouts():
  img = np.random.default_rng(0).random((6, 10, 3)).astype(np.float32)
  a = image_ops.imresize(img, output_shape=(9, 15))
  b = image_ops.imresize(img, 1.5)
  np.testing.assert_allclose(a, b, atol=1e-6)
  batch = image_ops.imresize(np.stack([img, img * 0.5]), 1.5)
  assert batch.shape == (2, 9, 15, 3)
  np.testing.assert_allclose(batch[1], np.asarray(b) * 0.5, atol=1e-6)
  gray = image_ops.imresize(img[..., 0], 1.5)
  np.testing.assert_allclose(gray, np.asarray(b)[..., 0], atol=1e-6)


@pytest.mark.parametrize('scale', [0.3, 0.5, 1 / 3, 1.5, 2, 3, 4])
def test_imresize_keeps_constant_images(scale):
  out = image_ops.imresize(np.full((12, 17), 0.37, np.float32), scale)
  np.testing.assert_allclose(out, 0.37, atol=1e-6)


def test_imresize_is_linear_and_jittable():
  rng = np.random.default_rng(1)
  a, b = rng.random((2, 11, 9)).astype(np.float32)
  f = jax.jit(lambda x: image_ops.imresize(x, 1 / 3))
  np.testing.assert_allclose(f(2 * a + b),
                             2 * np.asarray(f(a)) + np.asarray(f(b)),
                             atol=1e-5)


def test_imresize_uint8_rounds_and_saturates_after_each_axis():
  # MATLAB keeps uint8 between the two 1-D passes (rows first on a tie).
  img = np.array([[0, 255, 0, 255], [255, 0, 255, 0]] * 2, np.uint8)
  out = image_ops.imresize(img, 2)
  assert out.dtype == np.uint8
  to_u8 = lambda x: np.clip(np.floor(np.asarray(x, np.float64) + 0.5), 0, 255)
  rows = to_u8(image_ops.imresize(img.astype(np.float32), (2.0, 1.0)))
  both = to_u8(image_ops.imresize(rows.astype(np.float32), (1.0, 2.0)))
  np.testing.assert_array_equal(out, both)
  assert out.min() == 0 and out.max() == 255  # saturated, not wrapped.


def test_imresize_bad_arguments():
  with pytest.raises(ValueError, match='exactly one'):
    image_ops.imresize(np.zeros((4, 4)), 2, output_shape=(8, 8))
  with pytest.raises(ValueError, match='positive'):
    image_ops.imresize(np.zeros((4, 4)), -2)
  with pytest.raises(ValueError, match='dimensions'):
    image_ops.imresize(np.zeros((4,)), 2)
  with pytest.raises(TypeError, match='float or uint8'):
    image_ops.imresize(np.zeros((4, 4), np.int32), 2)


def test_rgb2ycbcr_uint8_matches_matlab_hand_values():
  rgb = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0],
                   [0, 0, 255], [128, 64, 32]]], np.uint8)
  ycc = np.asarray(image_ops.rgb2ycbcr(rgb))
  # Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, etc., then rounded.
  expected = np.array([[[235, 128, 128], [16, 128, 128], [81, 90, 240],
                        [145, 54, 34], [41, 240, 110], [84, 104, 158]]])
  # e.g. (128, 64, 32): Y = 16 + (8381.568 + 8227.392 + 798.912) / 255
  # = 84.266 -> 84; Cb = 104.459 -> 104; Cr = 158.395 -> 158.
  np.testing.assert_array_equal(ycc, expected)
  np.testing.assert_array_equal(image_ops.rgb2ycbcr(rgb, only_y=True),
                                expected[..., :1])


def test_rgb2ycbcr_float_range_and_round_trip():
  rng = np.random.default_rng(2)
  rgb = rng.random((2, 5, 7, 3)).astype(np.float32)
  ycc = np.asarray(image_ops.rgb2ycbcr(rgb))
  assert ycc[..., 0].min() >= 16 / 255 - 1e-6
  assert ycc[..., 0].max() <= 235 / 255 + 1e-6
  np.testing.assert_allclose(image_ops.ycbcr2rgb(ycc), rgb, atol=1e-5)
  white = np.asarray(image_ops.rgb2ycbcr(np.ones((1, 1, 3), np.float32)))
  np.testing.assert_allclose(white[0, 0], [235 / 255, 128 / 255, 128 / 255],
                             atol=1e-6)


def test_ycbcr2rgb_uint8_round_trip_within_one_level():
  rng = np.random.default_rng(3)
  rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  back = np.asarray(image_ops.ycbcr2rgb(image_ops.rgb2ycbcr(rgb)))
  assert back.dtype == np.uint8
  assert np.abs(back.astype(int) - rgb).max() <= 2


def test_colour_functions_reject_wrong_channels():
  with pytest.raises(ValueError, match='3-channel'):
    image_ops.rgb2ycbcr(np.zeros((4, 4, 4), np.uint8))
  with pytest.raises(ValueError, match='3-channel'):
    image_ops.ycbcr2rgb(np.zeros((4, 4), np.float32))


def test_modcrop_and_shave():
  img = np.arange(7 * 10).reshape(7, 10)
  np.testing.assert_array_equal(image_ops.modcrop(img, 3), img[:6, :9])
  batch = np.zeros((2, 7, 10, 3))
  assert image_ops.modcrop(batch, 4).shape == (2, 4, 8, 3)
  np.testing.assert_array_equal(image_ops.shave(img, 2), img[2:-2, 2:-2])
  assert image_ops.shave(batch, 1).shape == (2, 5, 8, 3)
  with pytest.raises(ValueError):
    image_ops.shave(img, 4)
  with pytest.raises(ValueError):
    image_ops.modcrop(img, 0)
