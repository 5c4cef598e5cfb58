"""PSNR and SSIM as the super-resolution literature computes them.

Both are computed on the host in float64 (as MATLAB does), on luminance images
in the 0..255 range, after shaving `border` pixels (the scale factor) from
every side. SSIM follows Wang et al. (2004): 11x11 Gaussian window with sigma
1.5, K1 = 0.01, K2 = 0.03, 'valid' filtering, mean of the SSIM map.
"""

import numpy as np
from scipy import ndimage


def _prepare(a, b, border: int):
  a = np.asarray(a, dtype=np.float64)
  b = np.asarray(b, dtype=np.float64)
  if a.shape != b.shape:
    raise ValueError(f'Images differ in shape: {a.shape} vs {b.shape}.')
  if a.ndim == 3 and a.shape[-1] == 1:
    a, b = a[..., 0], b[..., 0]
  if a.ndim != 2:
    raise ValueError('Metrics take single-channel images (H, W) or (H, W, 1); '
                     f'got shape {a.shape}.')
  if border:
    if min(a.shape) <= 2 * border:
      raise ValueError(f'Cannot shave {border} pixels from {a.shape}.')
    a = a[border:-border, border:-border]
    b = b[border:-border, border:-border]
  return a, b


def psnr(a, b, border: int = 0, data_range: float = 255.0) -> float:
  """Peak signal-to-noise ratio in dB between two images."""
  a, b = _prepare(a, b, border)
  mse = np.mean((a - b)**2)
  if mse == 0:
    return float('inf')
  return float(10.0 * np.log10(data_range**2 / mse))


def gaussian_window_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """Normalised 1-D Gaussian; its outer product is fspecial('gaussian')."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-x**2 / (2.0 * sigma**2))
  return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
  """Separable 2-D correlation with `g`, keeping only the 'valid' part."""
  r = len(g) // 2
  out = ndimage.correlate1d(img, g, axis=0, mode='constant')
  out = ndimage.correlate1d(out, g, axis=1, mode='constant')
  return out[r:-r, r:-r]


def ssim(a, b, border: int = 0, data_range: float = 255.0) -> float:
  """Structural similarity (Wang et al. 2004) between two images."""
  a, b = _prepare(a, b, border)
  g = gaussian_window_1d()
  if min(a.shape) < len(g):
    raise ValueError(f'SSIM needs images of at least {len(g)}x{len(g)} '
                     f'pixels after shaving, got {a.shape}.')
  c1 = (0.01 * data_range)**2
  c2 = (0.03 * data_range)**2
  mu_a = _filter_valid(a, g)
  mu_b = _filter_valid(b, g)
  var_a = _filter_valid(a * a, g) - mu_a**2
  var_b = _filter_valid(b * b, g) - mu_b**2
  cov = _filter_valid(a * b, g) - mu_a * mu_b
  ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
      (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
  return float(np.mean(ssim_map))
