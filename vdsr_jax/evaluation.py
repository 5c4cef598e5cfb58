"""The paper's evaluation protocol (Table 3 of Kim et al. 2016).

For each HR image and scale s:
  HR uint8 -> modcrop(s) -> Y = MATLAB rgb2ycbcr on uint8, kept uint8 (a
  single-channel image is its own Y) -> LR = imresize(Y / 255, 1 / s) in
  floating point -> input = imresize(LR, s) -> output (bicubic: the input;
  vdsr: the network) rounded and clipped to uint8 -> PSNR / SSIM against the
  HR Y with s pixels shaved from each border. Scores are averaged over images.
"""

import csv
import functools
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from vdsr_jax import image_ops
from vdsr_jax import inference
from vdsr_jax import metrics

METHODS = ('bicubic', 'vdsr')
BENCHMARKS = ('set5', 'set14', 'b100', 'urban100')
SCALES = (2, 3, 4)

Results = Dict[str, Dict[str, Dict[str, float]]]
# {dataset: {scale: {image name: {'psnr': .., 'ssim': ..}}}}
PerImage = Dict[str, Dict[str, Dict[str, Dict[str, float]]]]
# (params, x) -> network output, for (N, H, W, 1) float32 inputs in [0, 1].
Forward = Callable[[Any, np.ndarray], Any]


def luminance_uint8(img: np.ndarray) -> np.ndarray:
  """The uint8 Y channel (H, W) of an RGB or single-channel uint8 image."""
  img = np.asarray(img)
  if img.dtype != np.uint8:
    raise TypeError(f'Expected a uint8 image, got {img.dtype}.')
  if img.ndim == 2:
    return img
  if img.ndim == 3 and img.shape[-1] == 1:
    return img[..., 0]
  if img.ndim == 3 and img.shape[-1] == 3:
    return np.asarray(image_ops.rgb2ycbcr(img, only_y=True))[..., 0]
  raise ValueError(f'Expected (H, W), (H, W, 1) or (H, W, 3), got {img.shape}.')


@functools.partial(jax.jit, static_argnums=1)
def _degrade(hr_y: jax.Array, scale: int) -> Tuple[jax.Array, jax.Array]:
  lr = image_ops.imresize(hr_y.astype(jnp.float32) / 255.0, 1.0 / scale)
  return lr, image_ops.imresize(lr, scale)


def degrade(hr_y: np.ndarray, scale: int) -> Tuple[np.ndarray, np.ndarray]:
  """LR and bicubic-upscaled images (float32 in [0, 1]) from a uint8 HR Y.

  Jitted as a whole, so each image size compiles one small program.
  """
  lr, upscaled = _degrade(jnp.asarray(hr_y), int(scale))
  return np.asarray(lr), np.asarray(upscaled)


def super_resolve_y(hr_y: np.ndarray, scale: int, method: str,
                    params: Any = None,
                    bucket: Optional[int] = inference.DEFAULT_BUCKET,
                    forward: Optional[Forward] = None) -> np.ndarray:
  """The uint8 prediction of `method` for the modcropped HR Y `hr_y`.

  `forward` replaces `inference.network_forward` for 'vdsr' (e.g. a network
  run in another arithmetic, to measure what that costs under the protocol).
  """
  _, upscaled = degrade(hr_y, scale)
  if upscaled.shape != hr_y.shape:
    raise ValueError(f'HR size {hr_y.shape} is not a multiple of {scale}; '
                     'modcrop it first.')
  if method == 'bicubic':
    return inference.to_uint8(upscaled)
  if method == 'vdsr':
    x = upscaled[None, ..., None]
    out = (inference.network_forward(params, x, bucket=bucket)
           if forward is None else forward(params, x))
    return inference.to_uint8(np.asarray(out)[0, ..., 0])
  raise ValueError(f'Unknown method {method!r}; expected one of {METHODS}.')


def score_image(hr: np.ndarray, scale: int, method: str, params: Any = None,
                bucket: Optional[int] = inference.DEFAULT_BUCKET,
                forward: Optional[Forward] = None) -> Tuple[float, float]:
  """(PSNR, SSIM) of one HR image under the paper's protocol."""
  hr_y = luminance_uint8(image_ops.modcrop(np.asarray(hr), scale))
  pred = super_resolve_y(hr_y, scale, method, params, bucket, forward)
  return (metrics.psnr(pred, hr_y, border=scale),
          metrics.ssim(pred, hr_y, border=scale))


def evaluate_per_image(method: str = 'vdsr',
                       params: Any = None,
                       datasets: Sequence[str] = BENCHMARKS,
                       scales: Sequence[int] = SCALES,
                       data_dir: Optional[str] = None,
                       tfds_dir: Optional[str] = None,
                       bucket: Optional[int] = inference.DEFAULT_BUCKET,
                       progress: bool = True,
                       images: Optional[Dict[str, Iterable[Any]]] = None,
                       forward: Optional[Forward] = None) -> PerImage:
  """Scores every image of the benchmarks; `evaluate` averages these.

  Same arguments as `evaluate`. Images passed in `images` are named by their
  position ('0', '1', ...), loaded ones by their file name.

  Returns:
    {dataset: {str(scale): {image name: {'psnr': dB, 'ssim': ..}}}}, the
    images in dataset order.
  """
  if method not in METHODS:
    raise ValueError(f'Unknown method {method!r}; expected one of {METHODS}.')
  if method == 'vdsr' and params is None:
    raise ValueError("method='vdsr' needs params.")
  for s in scales:
    if int(s) != s or s < 2:
      raise ValueError(f'Scales must be integers >= 2, got {s!r}.')
  per_image: PerImage = {}
  for name in datasets:
    if images is not None and name in images:
      hrs = list(images[name])
      names = [str(i) for i in range(len(hrs))]
    else:
      from vdsr_jax import datasets as datasets_lib  # pylint: disable=g-import-not-at-top
      source = datasets_lib.load(name, data_dir=data_dir, tfds_dir=tfds_dir)
      examples = [source[i] for i in range(len(source))]
      hrs = [e['image'] for e in examples]
      names = [e['name'] for e in examples]
    if not hrs:
      raise ValueError(f'Dataset {name!r} has no images to score.')
    per_image[name] = {}
    for s in scales:
      cell = {}
      bar = tqdm.tqdm(list(zip(names, hrs)), desc=f'{method} {name} x{s}',
                      disable=not progress, leave=False)
      for image_name, hr in bar:
        p, q = score_image(hr, int(s), method, params, bucket, forward)
        cell[image_name] = {'psnr': float(p), 'ssim': float(q)}
      per_image[name][str(int(s))] = cell
      if progress:  # Long runs: each cell as soon as it is known.
        r = _mean_cell(cell)
        tqdm.tqdm.write(f'{method} {name} x{s}: PSNR {r["psnr"]:.3f} '
                        f'SSIM {r["ssim"]:.4f}')
  return per_image


def _mean_cell(cell: Dict[str, Dict[str, float]]) -> Dict[str, float]:
  p, q = np.mean([[r['psnr'], r['ssim']] for r in cell.values()], axis=0)
  return {'psnr': float(p), 'ssim': float(q)}


def mean_scores(per_image: PerImage) -> Results:
  """Per-image scores -> the benchmark cells: means over each cell's images."""
  return {name: {s: _mean_cell(cell) for s, cell in by_scale.items()}
          for name, by_scale in per_image.items()}


def evaluate(method: str = 'vdsr',
             params: Any = None,
             datasets: Sequence[str] = BENCHMARKS,
             scales: Sequence[int] = SCALES,
             data_dir: Optional[str] = None,
             tfds_dir: Optional[str] = None,
             bucket: Optional[int] = inference.DEFAULT_BUCKET,
             progress: bool = True,
             images: Optional[Dict[str, Iterable[Any]]] = None,
             forward: Optional[Forward] = None) -> Results:
  """Scores `method` on benchmark datasets with the paper's protocol.

  Args:
    method: 'bicubic' or 'vdsr'.
    params: VDSR params (needed for 'vdsr').
    datasets: names of TFDS builders (set5, set14, b100, urban100).
    scales: integer upscaling factors.
    data_dir: source folder of the images (else VDSR_DATA_DIR, ../shared).
    tfds_dir: where TFDS keeps the prepared datasets.
    bucket: shape bucket for the network (None: compile per image size).
    progress: show a progress bar.
    images: optional {dataset: iterable of HR uint8 images} used instead of
      loading the datasets (for tests and custom sets).
    forward: optional (params, x) -> output run instead of the package's
      network for 'vdsr' (`bucket` then unused).

  Returns:
    {dataset: {str(scale): {'psnr': mean dB, 'ssim': mean}}}.
  """
  return mean_scores(evaluate_per_image(
      method, params, datasets, scales, data_dir, tfds_dir, bucket, progress,
      images, forward))


def load_paper_table(path=None) -> Dict[Tuple[str, int], Dict[str, float]]:
  """Reads paper_table3.csv: {(dataset, scale): {'bicubic_psnr': ..., ...}}."""
  if path is None:
    from vdsr_jax import datasets as datasets_lib  # pylint: disable=g-import-not-at-top
    path = datasets_lib.source_dir().parent / 'reference' / 'paper_table3.csv'
  rows = {}
  with open(path) as f:
    for row in csv.DictReader(line for line in f if not line.startswith('#')):
      key = (row.pop('dataset'), int(row.pop('scale')))
      rows[key] = {k: float(v) for k, v in row.items()}
  return rows


def format_table(results: Results, method: str,
                 paper: Optional[Dict[Tuple[str, int], Dict[str, float]]] = None
                 ) -> str:
  """A text table: dataset, scale, PSNR, SSIM, paper values and differences."""
  header = f'{"dataset":<10} {"scale":>5} {"PSNR":>8} {"SSIM":>7}'
  if paper:
    header += f' {"paper":>8} {"dPSNR":>7} {"paperSSIM":>9} {"dSSIM":>7}'
  lines = [header, '-' * len(header)]
  for name, by_scale in results.items():
    for s, r in by_scale.items():
      line = f'{name:<10} {"x" + s:>5} {r["psnr"]:8.3f} {r["ssim"]:7.4f}'
      ref = paper.get((name, int(s))) if paper else None
      if ref:
        pp, ps = ref[f'{method}_psnr'], ref[f'{method}_ssim']
        line += (f' {pp:8.2f} {r["psnr"] - pp:+7.3f} {ps:9.4f} '
                 f'{r["ssim"] - ps:+7.4f}')
      lines.append(line)
  return '\n'.join(lines)
