"""vdsr_jax: VDSR super-resolution (Kim, Lee & Lee, CVPR 2016) in JAX/Flax.

Public API:
  VDSR                      the Flax module.
  upscale(params, img, s)   super-resolve an image (numpy/JAX array).
  load_params(path)         .mat (authors), .npz (export), .pth (PyTorch port,
                            read without unpickling) or orbax checkpoint.
  load_pretrained()         the weights shipped with the package.
  evaluate(...)             the paper's benchmark protocol.
  evaluate_per_image(...)   the same, every image's scores.
  imresize, rgb2ycbcr, ycbcr2rgb, modcrop, shave   MATLAB-exact image ops.
  psnr, ssim                the literature's metrics.
"""

from vdsr_jax.evaluation import evaluate
from vdsr_jax.evaluation import evaluate_per_image
from vdsr_jax.image_ops import imresize
from vdsr_jax.image_ops import modcrop
from vdsr_jax.image_ops import rgb2ycbcr
from vdsr_jax.image_ops import shave
from vdsr_jax.image_ops import ycbcr2rgb
from vdsr_jax.metrics import psnr
from vdsr_jax.metrics import ssim
from vdsr_jax.models import VDSR
from vdsr_jax.upscaling import upscale
from vdsr_jax.weights import load_params
from vdsr_jax.weights import load_pretrained

__version__ = '0.1.0'
