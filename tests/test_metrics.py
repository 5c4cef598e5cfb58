"""Tests of PSNR and SSIM."""

import numpy as np
import pytest

from vdsr_jax import metrics


def test_psnr_known_values():
  a = np.full((10, 10), 100, np.uint8)
  assert metrics.psnr(a, a) == float('inf')
  b = a + 1
  np.testing.assert_allclose(metrics.psnr(a, b), 20 * np.log10(255), rtol=1e-12)
  # Shaving removes the only wrong pixels.
  c = a.copy()
  c[0, :] = 0
  assert metrics.psnr(a, c, border=1) == float('inf')
  assert metrics.psnr(a, c) < 30


def test_gaussian_window_matches_fspecial():
  g = metrics.gaussian_window_1d(11, 1.5)
  w2 = np.outer(g, g)
  x = np.arange(11) - 5
  ref = np.exp(-(x[:, None]**2 + x[None, :]**2) / (2 * 1.5**2))
  np.testing.assert_allclose(w2, ref / ref.sum(), rtol=1e-12)


def test_ssim_of_constant_images_by_hand():
  a = np.full((20, 20), 100.0)
  b = np.full((20, 20), 120.0)
  c1 = (0.01 * 255)**2
  expected = (2 * 100 * 120 + c1) / (100**2 + 120**2 + c1)
  np.testing.assert_allclose(metrics.ssim(a, b), expected, rtol=1e-10)
  assert metrics.ssim(a, a) == pytest.approx(1.0)


def test_ssim_properties():
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (40, 50)).astype(np.uint8)
  noisy = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
  s = metrics.ssim(a, noisy)
  assert 0 < s < 1
  assert metrics.ssim(noisy, a) == pytest.approx(s)
  assert metrics.ssim(a, noisy, border=4) != s
  assert metrics.ssim(a[..., None], noisy[..., None]) == pytest.approx(s)


def test_metric_errors():
  with pytest.raises(ValueError, match='shape'):
    metrics.psnr(np.zeros((4, 4)), np.zeros((4, 5)))
  with pytest.raises(ValueError, match='single-channel'):
    metrics.psnr(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)))
  with pytest.raises(ValueError, match='at least'):
    metrics.ssim(np.zeros((8, 8)), np.zeros((8, 8)))
