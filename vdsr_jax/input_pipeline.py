"""Training batches of VDSR: multi-scale 41x41 luminance patches.

The paper's recipe (Kim et al. 2016, Sec. 4.1, and the public VDSR training
scripts): the target is a patch of the HR luminance Y in [0, 1]; the
input is the same patch of `imresize(imresize(Y, 1 / s), s)` (MATLAB-exact
bicubic, `image_ops.imresize`) of the modcropped HR image; every batch mixes
the scales {2, 3, 4}; augmentation is the 8 rotations/flips and, optionally,
downscaling the HR image by a few factors in 0.6..1.0 before everything else.

Exactness. A patch's input is the crop of the *whole* degraded image, but only
a region around the patch is degraded: the region starts on a multiple of s
(so its LR grid is the whole image's), and extends 4s HR pixels beyond the
patch (bicubic support: +-2s HR pixels when shrinking, +-2 LR = +-2s HR pixels
when enlarging). Where the region leaves the image its rows/columns are read
with MATLAB's own symmetric boundary rule; with an integer s the symmetric
extension of the HR image shrinks to the symmetric extension of the LR image,
so the mirrored region reproduces MATLAB's border handling of both resizes
exactly. That argument needs integer scales, hence they are required. The
down/up resize of a region is linear, so it is applied as two small matrices
built from imresize's own weights (`patch_operators`); tests compare patches
with `image_ops.imresize` of the whole image.

Determinism. Global example j of batch `step` uses its own generator
`np.random.default_rng([seed, step, j])` and the scale of row j is fixed,
`scales[j % len(scales)]` (row order inside a batch does not matter to a mean
loss; a fixed pattern keeps the jitted shapes static). A batch is thus a pure
function of (seed, step): resuming needs only the step, and a process of a
multi-host job builds only its rows of the global batch.

Sampling. An example picks one prepared plane (an image at one downscale
factor) with probability proportional to its area, so every HR pixel of every
variant is equally likely, as with the dense patch extraction of the original
scripts; then a dihedral transform, then a uniform patch position in the
transformed, modcropped plane.
"""

import collections
from concurrent import futures
import dataclasses
import functools
import multiprocessing
import queue
import signal
import threading
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from vdsr_jax import image_ops

Batch = Dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """What the training batches look like.

  Attributes:
    patch_size: side of the square patches (41 in the paper).
    batch_size: GLOBAL batch size, summed over processes (64 in the paper).
    scales: integer upscaling factors, each >= 1; global row j has scale
      `scales[j % len(scales)]`, so every batch of >= len(scales) rows mixes
      all of them.
    augment: apply a random one of the 8 rotations/flips.
    downscale_factors: HR images are also used downscaled by these factors
      (each in (0, 1]); (1.0,) turns this augmentation off.
    seed: non-negative integer seeding the whole stream.
  """
  patch_size: int = 41
  batch_size: int = 64
  scales: Sequence[int] = (2, 3, 4)
  augment: bool = True
  downscale_factors: Sequence[float] = (1.0,)
  seed: int = 0

  def __post_init__(self):
    if int(self.patch_size) != self.patch_size or self.patch_size < 1:
      raise ValueError(f'patch_size must be an integer >= 1, got '
                       f'{self.patch_size!r}.')
    if int(self.batch_size) != self.batch_size or self.batch_size < 1:
      raise ValueError(f'batch_size must be an integer >= 1, got '
                       f'{self.batch_size!r}.')
    scales = tuple(self.scales)
    if not scales:
      raise ValueError('scales must not be empty.')
    for s in scales:
      if isinstance(s, bool) or float(s) != int(s) or int(s) < 1:
        raise ValueError(
            f'scales must be integers >= 1, got {scales!r}: the patch '
            'degradation equals the whole-image one only when the LR grid '
            'aligns with HR pixels, i.e. for integer scales.')
    if len(set(int(s) for s in scales)) != len(scales):
      raise ValueError(f'scales must be distinct, got {scales!r}.')
    if self.batch_size < len(scales):
      raise ValueError(f'batch_size {self.batch_size} cannot hold one example '
                       f'of each of the {len(scales)} scales.')
    factors = tuple(float(f) for f in self.downscale_factors)
    if not factors or not all(0.0 < f <= 1.0 for f in factors):
      raise ValueError('downscale_factors must be a non-empty list of values '
                       f'in (0, 1], got {tuple(self.downscale_factors)!r}.')
    if int(self.seed) != self.seed or self.seed < 0:
      raise ValueError(f'seed must be an integer >= 0, got {self.seed!r}.')
    # Canonical, hashable field values.
    object.__setattr__(self, 'patch_size', int(self.patch_size))
    object.__setattr__(self, 'batch_size', int(self.batch_size))
    object.__setattr__(self, 'scales', tuple(int(s) for s in scales))
    object.__setattr__(self, 'downscale_factors', factors)
    object.__setattr__(self, 'seed', int(self.seed))


class PatchSpec(NamedTuple):
  """Where one example comes from.

  `top`, `left` index the patch in `dihedral(prepared[plane], transform)`
  modcropped to a multiple of `scale`.
  """
  plane: int
  transform: int
  scale: int
  top: int
  left: int


# ----------------------------------------------------------------------------
# Preparation (once per image)
# ----------------------------------------------------------------------------


# rgb2ycbcr is per pixel: running it on pixel lists padded to a multiple of
# this many pixels compiles a handful of shapes instead of one per image size.
_PIXEL_CHUNK = 1 << 16


def luminance(img: Any) -> np.ndarray:
  """Float32 Y plane (H, W) in [0, 1] of a uint8 RGB or single-channel image.

  As the authors' training scripts and the evaluation protocol: Y is MATLAB's
  `rgb2ycbcr` on the uint8 image (rounded to uint8), then divided by 255; a
  single-channel image is its own Y.
  """
  img = np.asarray(img)
  if img.dtype != np.uint8:
    raise TypeError(f'Training images must be uint8, got {img.dtype}.')
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  if img.ndim == 2:
    return img.astype(np.float32) / np.float32(255.0)
  if img.ndim != 3 or img.shape[-1] != 3:
    raise ValueError('Training images must be (H, W), (H, W, 1) or (H, W, 3); '
                     f'got {img.shape}.')
  h, w, _ = img.shape
  # Padded to a multiple of _PIXEL_CHUNK pixels so few shapes compile.
  pixels = np.zeros((-(-h * w // _PIXEL_CHUNK) * _PIXEL_CHUNK, 1, 3), np.uint8)
  pixels[:h * w, 0] = img.reshape(h * w, 3)
  with jax.default_device(jax.local_devices(backend='cpu')[0]):
    y = np.asarray(image_ops.rgb2ycbcr(pixels, only_y=True))
  return y[:h * w, 0, 0].reshape(h, w).astype(np.float32) / np.float32(255.0)


def luminance_u8(img: Any) -> np.ndarray:
  """The uint8 Y plane of `img`: `luminance` of it equals `luminance(img)`.

  A compact, exact stand-in for an RGB training image (a third of the
  pixels), e.g. to carry the training set to a machine without it.
  """
  return np.round(luminance(img) * np.float32(255.0)).astype(np.uint8)


def downscale(plane: np.ndarray, factor: float) -> np.ndarray:
  """MATLAB `imresize(plane, factor)` (bicubic, antialiased) in float64 numpy.

  The same weights as `image_ops.imresize` (`image_ops.contributions`),
  applied with numpy so that images of many sizes need no compilation.
  """
  x = np.asarray(plane, np.float64)
  for axis in (0, 1):  # Equal scales: MATLAB resizes rows first.
    length = x.shape[axis]
    weights, indices = image_ops.contributions(
        length, image_ops.output_size(length, factor), float(factor))
    x = np.moveaxis(x, axis, 0)
    x = np.einsum('op,op...->o...', weights, x[indices])
    x = np.moveaxis(x, 0, axis)
  return x.astype(np.float32)


def prepare_images(images: Sequence[Any],
                   downscale_factors: Sequence[float] = (1.0,)
                   ) -> List[np.ndarray]:
  """HR luminance planes of all images at all downscale factors.

  Resizing Y equals taking Y of the resized RGB image (rgb2ycbcr is affine
  and bicubic weights sum to one), so Y is computed once and downscaled.

  Args:
    images: uint8 (H, W), (H, W, 1) or (H, W, 3) arrays, or mappings with an
      'image' entry (such as the examples of `datasets.load`).
    downscale_factors: factors in (0, 1]; 1.0 keeps the image as is.

  Returns:
    Float32 (H, W) planes, image-major: entry i * len(factors) + k is image i
    downscaled by factors[k] (MATLAB bicubic, `downscale`).
  """
  factors = tuple(float(f) for f in downscale_factors)
  if not factors or not all(0.0 < f <= 1.0 for f in factors):
    raise ValueError('downscale_factors must be a non-empty list of values in '
                     f'(0, 1], got {tuple(downscale_factors)!r}.')
  if len(images) == 0:
    raise ValueError('The list of training images is empty.')
  planes = []
  for img in images:
    if isinstance(img, Mapping):
      img = img['image']
    y = luminance(img)
    planes.extend(y if f == 1.0 else downscale(y, f) for f in factors)
  return planes


# ----------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------


def dihedral(x: np.ndarray, transform: int) -> np.ndarray:
  """One of the 8 rotations/flips of a 2-D array (a view, no copy).

  0..3 rotate by 0/90/180/270 degrees; 4..7 do the same, then flip left-right.
  """
  x = np.rot90(x, transform % 4)
  return x[:, ::-1] if transform >= 4 else x


def region_size(patch_size: int, scale: int) -> int:
  """Side of the HR region degraded for a patch, a multiple of `scale`.

  The region starts 4s..5s-1 pixels before the patch (on a multiple of s) and
  ends at least 4s pixels after it.
  """
  return -(-(patch_size + 9 * scale - 1) // scale) * scale


def _mirror(index: np.ndarray, length: int) -> np.ndarray:
  """MATLAB's symmetric boundary: -1 -> 0, length -> length - 1, period 2L."""
  index = np.mod(index, 2 * length)
  return np.where(index < length, index, 2 * length - 1 - index)


def _axis_window(start: int, size: int, length: int):
  """Rows [start, start + size) of an axis of `length`, mirrored if outside."""
  if 0 <= start and start + size <= length:
    return slice(start, start + size)
  return _mirror(np.arange(start, start + size), length)


def extract_region(plane: np.ndarray, spec: PatchSpec, patch_size: int):
  """The HR region around a patch and the patch's offset inside it.

  Returns:
    (region, (dy, dx)): float32 (R, R) with R = region_size(patch_size, s),
    and the patch's top-left corner inside the region.
  """
  s = spec.scale
  x = dihedral(plane, spec.transform)
  h, w = (x.shape[0] // s) * s, (x.shape[1] // s) * s  # modcrop
  size = region_size(patch_size, s)
  top = (spec.top // s) * s - 4 * s
  left = (spec.left // s) * s - 4 * s
  rows = _axis_window(top, size, h)
  cols = _axis_window(left, size, w)
  return x[rows][:, cols], (spec.top - top, spec.left - left)


# ----------------------------------------------------------------------------
# Degradation (jitted, CPU)
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def patch_operators(patch_size: int, scale: int) -> np.ndarray:
  """Matrices A_q with patch input = A_qy @ region @ A_qx^T.

  imresize is separable and linear: along an axis it is the matrix whose rows
  hold `image_ops.contributions` weights (mirrored indices added up). The
  down-then-up resize of a region of side R is M = U @ D, and the patch rows
  starting at offset 4s + q (q = offset mod s) are M[4s + q : 4s + q + p].
  Built in float64 once; applying two small matmuls per example is much
  faster on CPU than imresize's gathers (tests check equality with it).

  Returns:
    float32 (scale, patch_size, R), R = region_size(patch_size, scale).
  """
  size = region_size(patch_size, scale)
  lr = size // scale
  down = resize_matrix(size, lr, lr / size)
  up = resize_matrix(lr, size, size / lr)
  full = up @ down
  return np.stack([
      full[4 * scale + q:4 * scale + q + patch_size] for q in range(scale)
  ]).astype(np.float32)


@functools.lru_cache(maxsize=None)
def resize_matrix(in_length: int, out_length: int,
                  scale: float) -> np.ndarray:
  """float64 (out_length, in_length) matrix of 1-D MATLAB bicubic resizing."""
  weights, indices = image_ops.contributions(in_length, out_length, scale)
  matrix = np.zeros((out_length, in_length), np.float64)
  rows = np.repeat(np.arange(out_length), weights.shape[1])
  np.add.at(matrix, (rows, indices.ravel()), weights.ravel())
  return matrix


@jax.jit
def degrade_regions(regions: jax.Array, operators: jax.Array,
                    phases: jax.Array) -> jax.Array:
  """Degraded patches of HR regions: A_y @ region @ A_x^T per example.

  Args:
    regions: (N, R, R) float32 HR regions.
    operators: (s, p, R) float32, `patch_operators(p, s)`.
    phases: (N, 2) int32 patch offsets in the regions modulo s (rows, cols).

  Returns:
    (N, p, p) float32 patches of `imresize(imresize(region, 1 / s), s)`.
  """
  a_y = operators[phases[:, 0]]
  a_x = operators[phases[:, 1]]
  hi = jax.lax.Precision.HIGHEST
  rows = jnp.einsum('npr,nrc->npc', a_y, regions, precision=hi)
  return jnp.einsum('npc,nqc->npq', rows, a_x, precision=hi)


@functools.lru_cache(maxsize=None)
def _device_operators(patch_size: int, scale: int) -> jax.Array:
  return jax.device_put(patch_operators(patch_size, scale),
                        jax.local_devices(backend='cpu')[0])


def patches_from_specs(prepared: Sequence[np.ndarray],
                       specs: Sequence[PatchSpec], patch_size: int) -> Batch:
  """Builds the examples described by `specs`, in order.

  Regions and targets are cut in numpy; each scale's group is degraded by
  one jitted call on the CPU device (group sizes are fixed per process, so
  the compiled shapes never change).

  Returns:
    {'inputs', 'targets': float32 (N, p, p, 1), 'scale': int32 (N,)}.
  """
  n, p = len(specs), patch_size
  inputs = np.empty((n, p, p, 1), np.float32)
  targets = np.empty((n, p, p, 1), np.float32)
  scale_of = np.array([spec.scale for spec in specs], np.int32)
  cpu = jax.local_devices(backend='cpu')[0]
  for s in sorted(set(scale_of.tolist())):
    rows = np.flatnonzero(scale_of == s)
    size = region_size(p, s)
    regions = np.empty((len(rows), size, size), np.float32)
    phases = np.empty((len(rows), 2), np.int32)
    for k, row in enumerate(rows):
      spec = specs[row]
      regions[k], (dy, dx) = extract_region(prepared[spec.plane], spec, p)
      phases[k] = dy - 4 * s, dx - 4 * s
      targets[row, ..., 0] = regions[k, dy:dy + p, dx:dx + p]
    out = degrade_regions(jax.device_put(regions, cpu),
                          _device_operators(p, int(s)),
                          jax.device_put(phases, cpu))
    inputs[rows, ..., 0] = np.asarray(out)
  return {'inputs': inputs, 'targets': targets, 'scale': scale_of}


# ----------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------


def usable_planes(prepared: Sequence[np.ndarray],
                  config: PipelineConfig) -> np.ndarray:
  """Bool per plane: does it hold a patch at every scale (after modcrop)?"""
  sizes = np.array([np.shape(plane)[:2] for plane in prepared]).reshape(-1, 2)
  usable = np.ones(len(sizes), bool)
  for s in config.scales:
    usable &= (sizes // s * s).min(axis=1) >= config.patch_size
  return usable


def check_prepared(prepared: Sequence[np.ndarray],
                   config: PipelineConfig) -> np.ndarray:
  """Raises ValueError unless every image gives patches at every scale.

  Returns `usable_planes(prepared, config)`.

  A downscaled variant too small for a patch is only left out of the
  sampling (`draw_specs` gives it no weight), as the dense patch extraction
  of the original scripts gets no patch from it; an image none of whose
  variants holds a patch is an error.
  """
  if len(prepared) == 0:
    raise ValueError('The list of training images is empty.')
  for i, plane in enumerate(prepared):
    if np.ndim(plane) != 2:
      raise ValueError(f'Prepared plane {i} must be 2-D, got shape '
                       f'{np.shape(plane)}; use prepare_images.')
  p = config.patch_size
  factors = config.downscale_factors
  usable = usable_planes(prepared, config)
  small = np.flatnonzero(~usable.reshape(-1, len(factors)).any(axis=1))
  if small.size:
    i = int(small[0]) * len(factors) + int(np.argmax(factors))
    h, w = np.shape(prepared[i])
    s = max(config.scales)
    raise ValueError(
        f'Training image {int(small[0])} (downscale factor {max(factors)}; '
        f'prepared plane {i}) is {h}x{w}, {h // s * s}x{w // s * s} after '
        f'modcrop({s}): smaller than the {p}x{p} patch.')
  return usable


def _check_process(config: PipelineConfig, process_index: int,
                   process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'Need 0 <= process_index < process_count, got '
                     f'{process_index} of {process_count}.')
  if config.batch_size % process_count:
    raise ValueError(f'The global batch_size {config.batch_size} is not '
                     f'divisible by process_count {process_count}.')


def draw_specs(prepared: Sequence[np.ndarray], config: PipelineConfig,
               step: int, process_index: int = 0,
               process_count: int = 1) -> List[PatchSpec]:
  """The random choices of this process's rows of global batch `step`."""
  if int(step) != step or step < 0:
    raise ValueError(f'step must be an integer >= 0, got {step!r}.')
  _check_process(config, process_index, process_count)
  areas = np.array([plane.shape[0] * plane.shape[1] for plane in prepared],
                   np.float64)
  cumulative = np.cumsum(areas * usable_planes(prepared, config))
  local = config.batch_size // process_count
  first = process_index * local
  p = config.patch_size
  specs = []
  for j in range(first, first + local):
    # One draw of 4 uniforms in [0, 1) per example: plane, transform, top,
    # left (floor(u * n) is uniform on 0..n-1 up to 2^-53).
    u = np.random.default_rng([config.seed, int(step), j]).random(4)
    plane = int(np.searchsorted(cumulative, u[0] * cumulative[-1],
                                side='right'))
    plane = min(plane, len(prepared) - 1)
    transform = int(u[1] * 8) if config.augment else 0
    s = config.scales[j % len(config.scales)]
    h, w = prepared[plane].shape
    if transform % 2:
      h, w = w, h
    h, w = (h // s) * s, (w // s) * s
    top = int(u[2] * (h - p + 1))
    left = int(u[3] * (w - p + 1))
    specs.append(PatchSpec(plane, transform, s, top, left))
  return specs


def make_batch(prepared: Sequence[np.ndarray], config: PipelineConfig,
               step: int, process_index: int = 0,
               process_count: int = 1) -> Batch:
  """Rows [i * B / P, (i + 1) * B / P) of global batch `step`.

  A pure function of (prepared, config, step): concatenating the batches of
  processes 0..P-1 gives the single-process batch bit for bit.

  Returns:
    {'inputs': float32 (B / P, p, p, 1) bicubic-degraded patches,
     'targets': float32 (B / P, p, p, 1) HR patches,
     'scale': int32 (B / P,) scale factor of each row}.
  """
  check_prepared(prepared, config)
  return _build_batch(prepared, config, step, process_index, process_count)


# State of an input worker process (set once by `_worker_init`).
_WORKER: Dict[str, Any] = {}


def _worker_init(prepared, config, process_index, process_count) -> None:
  """Input worker: CPU-only JAX, Ctrl-C left to the training process."""
  # The trainer handles SIGINT (checkpoint, then stop); a worker killed by
  # the terminal's Ctrl-C would instead break the pool mid-step.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  jax.config.update('jax_platforms', 'cpu')  # never touch the accelerator
  _WORKER.update(prepared=prepared, config=config,
                 process_index=process_index, process_count=process_count)


def _build_batch(prepared, config, step, process_index,
                 process_count) -> Batch:
  """`make_batch` without re-checking `prepared` (checked once up front)."""
  specs = draw_specs(prepared, config, step, process_index, process_count)
  return patches_from_specs(prepared, specs, config.patch_size)


def _worker_batch(step: int) -> Batch:
  w = _WORKER
  return _build_batch(w['prepared'], w['config'], step, w['process_index'],
                      w['process_count'])


class PatchPipeline:
  """Iterator over training batches from `start_step`, built ahead of use.

  The batches equal `make_batch(prepare_images(images, ...), config, step)`
  for step = start_step, start_step + 1, ..., whatever `prefetch` and
  `workers` are; save `next_step` with a checkpoint and pass it back as
  `start_step` to resume.

  With `workers=0` one background thread builds `prefetch` batches ahead.
  Building a batch is mostly Python (~5 ms for 64 patches), and the thread
  shares the interpreter lock with the training loop, so on a fast
  accelerator the loop waits for it; `workers=N` builds batches in N
  processes instead (spawned, CPU-only JAX), `prefetch + N` steps ahead.

  Usage:
    with PatchPipeline(images, config, start_step=step) as pipeline:
      for batch in pipeline: ...
  """

  def __init__(self, images: Sequence[Any], config: PipelineConfig, *,
               start_step: int = 0, process_index: int = 0,
               process_count: int = 1, prefetch: int = 2, workers: int = 0):
    if int(start_step) != start_step or start_step < 0:
      raise ValueError(f'start_step must be an integer >= 0, got '
                       f'{start_step!r}.')
    if prefetch < 0:
      raise ValueError(f'prefetch must be >= 0, got {prefetch}.')
    if int(workers) != workers or workers < 0:
      raise ValueError(f'workers must be an integer >= 0, got {workers!r}.')
    _check_process(config, process_index, process_count)
    self.config = config
    self.process_index = process_index
    self.process_count = process_count
    self.prepared = prepare_images(images, config.downscale_factors)
    left_out = int((~check_prepared(self.prepared, config)).sum())
    if left_out:
      logging.info('%d of %d downscaled variants are too small for a %dx%d '
                   'patch at every scale and are left out.', left_out,
                   len(self.prepared), config.patch_size, config.patch_size)
    self._next_step = int(start_step)
    self._closed = False
    self._stop = threading.Event()
    self._queue: Optional[queue.Queue] = None
    self._thread: Optional[threading.Thread] = None
    self._pool: Optional[futures.ProcessPoolExecutor] = None
    self._pending: collections.deque = collections.deque()
    if workers > 0:
      self._pool = futures.ProcessPoolExecutor(
          workers, mp_context=multiprocessing.get_context('spawn'),
          initializer=_worker_init,
          initargs=(self.prepared, config, process_index, process_count))
      self._ahead = prefetch + workers
      self._submitted = self._next_step
      self._submit()
    elif prefetch > 0:
      self._queue = queue.Queue(maxsize=prefetch)
      self._thread = threading.Thread(
          target=self._produce, args=(self._next_step,), daemon=True,
          name='PatchPipeline')
      self._thread.start()

  @property
  def next_step(self) -> int:
    """Step index of the batch that the next `__next__` returns."""
    return self._next_step

  def _batch(self, step: int) -> Batch:
    return _build_batch(self.prepared, self.config, step, self.process_index,
                        self.process_count)

  def _submit(self) -> None:
    """Keeps the worker processes `prefetch + workers` steps ahead."""
    while len(self._pending) < self._ahead:
      self._pending.append(self._pool.submit(_worker_batch, self._submitted))
      self._submitted += 1

  def _produce(self, step: int) -> None:
    """Thread body: batches in step order, or the exception that stopped it."""
    while not self._stop.is_set():
      try:
        item = (step, self._batch(step))
      except BaseException as e:  # pylint: disable=broad-except
        item = (step, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if isinstance(item[1], BaseException):
        return
      step += 1

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    if self._closed:
      raise StopIteration
    if self._pool is not None:
      try:
        batch = self._pending.popleft().result()
      except BaseException:
        self.close()
        raise
      self._submit()
    elif self._queue is None:
      batch = self._batch(self._next_step)
    else:
      step, batch = self._queue.get()
      if isinstance(batch, BaseException):
        self.close()
        raise batch
      assert step == self._next_step, (step, self._next_step)
    self._next_step += 1
    return batch

  def close(self) -> None:
    """Stops the background thread or processes; the iterator then ends."""
    self._closed = True
    self._stop.set()
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)
      self._pool = None
      self._pending.clear()
    if self._thread is not None:
      while self._thread.is_alive():
        try:  # Unblock a pending put.
          self._queue.get_nowait()
        except queue.Empty:
          pass
        self._thread.join(timeout=0.05)
      self._thread = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __del__(self):
    # Only signal: joining here could block the garbage collector.
    stop = getattr(self, '_stop', None)
    if stop is not None:
      stop.set()
    pool = getattr(self, '_pool', None)
    if pool is not None:
      pool.shutdown(wait=False, cancel_futures=True)
