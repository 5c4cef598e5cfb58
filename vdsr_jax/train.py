"""Training VDSR: train state, the jitted step, the loop (config: train_config).

`train_and_evaluate(config, workdir)` runs everything: optional multi-host
start, data, model, optimiser, checkpoint resume, the training loop with
logging, periodic Set5 evaluation, and the final report and export.

Parallelism: one `jax.sharding.Mesh` over all devices (of all processes),
axis 'data'. The batch is sharded along 'data'; params and optimiser state
are replicated, so XLA turns the mean loss's gradient into an all-reduce.
The same code runs on 1 CPU, N GPUs, a TPU slice or several hosts; each host
builds only its rows of the global batch (input_pipeline is a pure function
of (seed, step, row)).

Loss. The network output (for the residual model: input + predicted
residual) is compared with the HR patch by the mean squared error over all
pixels of the batch (`--loss=mse`, the default). The paper writes
1/2 ||y - f(x)||^2 per patch averaged over the batch (Caffe's EuclideanLoss,
MatConvNet's L2), which is 0.5 * patch_size**2 = 840.5 times the MSE for
41x41 patches: `--loss=paper` optimises that scaled objective instead. The
scale matters: lr, weight decay and the clip threshold theta / lr act on the
gradient of whichever objective is chosen. The paper's updates equal the MSE
updates with lr * 840.5 and weight_decay / 840.5 (same theta), so with
`--loss=mse` the same flag values mean a smaller step and a relatively
stronger weight decay. Logged `loss` is always the plain MSE.
"""

import functools
import os
import pathlib
import signal
import threading
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from absl import logging
import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import tqdm

from vdsr_jax import atomic
from vdsr_jax import checkpointing
from vdsr_jax import conv
from vdsr_jax import input_pipeline
from vdsr_jax import models
from vdsr_jax import optimizers
from vdsr_jax import reporting
from vdsr_jax import train_config
from vdsr_jax import weights as weights_lib
from vdsr_jax.native import dnnl

PARAMS_FILE = 'params.npz'
# How far the loop may dispatch ahead of the device. JAX runs steps
# asynchronously, and a stop (SIGTERM, Ctrl-C, --time_limit) is acted on at
# the next step the loop dispatches, after every step already in flight has
# run: two keep an accelerator fed while bounding that wait to two steps.
MAX_STEPS_IN_FLIGHT = 2


class TrainingError(RuntimeError):
  """Training stopped on its own: a non-finite loss."""


class TimeLimitReached(Exception):
  """`time_limit` ran out (or `stop_at_step` was reached): training stopped
  after saving a checkpoint.

  Rerunning the same command continues the run (exactly, like a resume after
  Ctrl-C); `experiments/train.py` exits with status 75 (EX_TEMPFAIL: try
  again), so a script can rerun it until it exits 0. `step` is the step the
  checkpoint holds.
  """

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = int(step)


class TrainingInterrupted(KeyboardInterrupt):
  """Ctrl-C or SIGTERM: training stopped after saving a checkpoint.

  `signal_number` is the signal that asked for the stop (SIGINT for a
  KeyboardInterrupt raised otherwise); `experiments/train.py` exits with
  128 + it, as a process killed by that signal would.
  """

  def __init__(self, message: str, signal_number: int = signal.SIGINT):
    super().__init__(message)
    self.signal_number = int(signal_number)


# ----------------------------------------------------------------------------
# State and step.
# ----------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (a pytree of arrays)."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key; reserved for stochastic extensions

  def to_dict(self) -> Dict[str, Any]:
    """The state as a plain dict (what the checkpoint stores)."""
    return {'step': self.step, 'params': self.params,
            'opt_state': self.opt_state, 'rng': self.rng}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'TrainState':
    """Inverse of `to_dict`."""
    return cls(step=d['step'], params=d['params'], opt_state=d['opt_state'],
               rng=d['rng'])


def create_model(config: train_config.TrainConfig) -> models.VDSR:
  """The VDSR module of `config` (depth, features, residual, compute dtype,
  initial scale of the output layer).

  With `compute_dtype='bfloat16'` the convolutions run in bfloat16 (mixed
  precision: the parameters, their gradients, the optimiser and the loss
  stay float32); the module's output is float32 either way.
  """
  return models.VDSR(depth=config.depth, features=config.features,
                     residual=config.residual,
                     dtype=jnp.dtype(config.compute_dtype),
                     output_init_scale=config.output_init_scale,
                     init_fan=config.init_fan)


def create_optimizer(config: train_config.TrainConfig
                     ) -> Tuple[optax.GradientTransformation,
                                optimizers.Schedule]:
  """The optax chain and lr schedule of `config` (see optimizers.py)."""
  return optimizers.create(
      learning_rate=config.learning_rate, total_steps=config.total_steps,
      decay_every=config.decay_every, boundaries=config.decay_boundaries,
      decay_factor=config.decay_factor, optimizer=config.optimizer,
      momentum=config.momentum, weight_decay=config.weight_decay,
      decay_biases=config.decay_biases, train_biases=config.train_biases,
      clip_mode=config.clip_mode,
      clip_theta=config.clip_theta, clip_adjustable=config.clip_adjustable)


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh 'data' over all devices, ordered by process then id.

  Process order matters: `make_array_from_process_local_data` puts process
  p's rows where p's devices sit, and input_pipeline gives process p the
  p-th block of the global batch.
  """
  devices = jax.devices() if devices is None else devices
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  return Mesh(np.array(devices), ('data',))


def create_train_state(config: train_config.TrainConfig, model: models.VDSR,
                       tx: optax.GradientTransformation,
                       mesh: Optional[Mesh] = None) -> TrainState:
  """Fresh state from `config.seed`, replicated over `mesh` if given."""
  def init(key):
    init_key, state_key = jax.random.split(key)
    params = models.init_params(init_key, model, config.patch_size)
    return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                      opt_state=tx.init(params), rng=state_key)

  out = NamedSharding(mesh, P()) if mesh is not None else None
  return jax.jit(init, out_shardings=out)(jax.random.PRNGKey(config.seed))


def loss_scale(config: train_config.TrainConfig) -> float:
  """Objective / MSE of the batch.

  'mse': 1. 'paper': 0.5 * patch_size**2, the paper's 1/2 ||r - f(x)||^2 per
  patch averaged over the batch (Caffe's EuclideanLoss). 'sum': patch_size**2
  * batch_size, the squared error summed over the whole (global) batch
  (Torch's MSELoss(size_average=False), the PyTorch port's).
  """
  if config.loss == 'mse':
    return 1.0
  if config.loss == 'paper':
    return 0.5 * config.patch_size ** 2
  return float(config.patch_size ** 2 * config.batch_size)


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves))


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *,
               model: models.VDSR, tx: optax.GradientTransformation,
               schedule: optimizers.Schedule, scale: float = 1.0
               ) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One SGD update on a batch {'inputs', 'targets'}: pure, jit it.

  Returns:
    (new state, metrics): loss (MSE of this batch), grad_norm (global norm
    of the objective's gradient before clipping), lr (the rate of this
    update) and finite (loss, gradient norm and new params all finite).
  """
  def objective(params):
    out = model.apply({'params': params}, batch['inputs'])
    mse = jnp.mean(jnp.square(out - batch['targets']))
    return mse * scale, mse

  grads, mse = jax.grad(objective, has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(mse) & jnp.isfinite(grad_norm) & _all_finite(params)
  metrics = {'loss': mse, 'grad_norm': grad_norm,
             'lr': schedule(state.step), 'finite': finite}
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state)
  return new_state, metrics


def make_train_step(config: train_config.TrainConfig, model: models.VDSR,
                    tx: optax.GradientTransformation,
                    schedule: optimizers.Schedule, mesh: Mesh):
  """`train_step` jitted over `mesh`: batch along 'data', state replicated.

  The input state's buffers are donated (updated in place).
  """
  replicated = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P('data'))
  step = functools.partial(train_step, model=model, tx=tx, schedule=schedule,
                           scale=loss_scale(config))
  return jax.jit(step, in_shardings=(replicated, data),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def global_batch(batch: Mapping[str, np.ndarray], mesh: Mesh
                 ) -> Dict[str, jax.Array]:
  """This process's rows of the batch -> global arrays sharded on 'data'."""
  sharding = NamedSharding(mesh, P('data'))
  return {k: jax.make_array_from_process_local_data(sharding, batch[k])
          for k in ('inputs', 'targets')}


def host_params(params) -> Dict[str, Dict[str, np.ndarray]]:
  """Replicated (possibly multi-host) params -> numpy, from a local copy."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), params)


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------


def initialize_distributed(config: train_config.TrainConfig) -> None:
  """Starts jax.distributed if any multi-host flag is set (before any JAX)."""
  if (config.coordinator_address is None and config.num_processes is None
      and config.process_id is None):
    return
  if jax.distributed.is_initialized():
    return
  jax.distributed.initialize(coordinator_address=config.coordinator_address,
                             num_processes=config.num_processes,
                             process_id=config.process_id)


def read_image_folder(folder) -> list:
  """The 8-bit images in `folder` (uint8 arrays), sorted by file name.

  Read with Pillow alone (no TFDS), for machines that have the images but
  not the prepared datasets, e.g. `experiments/export_luminance.py` output.
  """
  from vdsr_jax import image_io  # pylint: disable=g-import-not-at-top
  folder = pathlib.Path(folder).expanduser()
  if not folder.is_dir():
    raise train_config.ConfigError(f'{folder} is not a folder of images.')
  paths = sorted(p for p in folder.iterdir()
                 if p.suffix.lower() in image_io.IMAGE_SUFFIXES)
  if not paths:
    raise train_config.ConfigError(
        f'{folder} holds no images ({", ".join(image_io.IMAGE_SUFFIXES)}).')
  images = []
  for path in paths:
    try:
      image = image_io.read_image(path)
    except image_io.ImageReadError as e:
      raise train_config.ConfigError(str(e)) from None
    if image.dtype != np.uint8:
      raise train_config.ConfigError(
          f'{path} is {image.dtype}; training and evaluation images must be '
          '8-bit.')
    images.append(image)
  return images


def load_train_images(config: train_config.TrainConfig) -> list:
  """The training images (uint8 arrays): `train_images_dir`, else the
  `train_dataset` TFDS builder; the first `max_train_images` if set."""
  limit = config.max_train_images or None
  if config.train_images_dir:
    return read_image_folder(config.train_images_dir)[:limit]
  from vdsr_jax import datasets  # pylint: disable=g-import-not-at-top
  source = datasets.load(config.train_dataset, data_dir=config.data_dir,
                         tfds_dir=config.tfds_dir)
  # Decodes only the images kept.
  return [source[i]['image'] for i in range(len(source))[:limit]]


def load_eval_images(config: train_config.TrainConfig) -> Dict[str, list]:
  """{'set5': [uint8 HR images]} for the periodic evaluation."""
  if config.eval_images_dir:
    return {'set5': read_image_folder(config.eval_images_dir)}
  from vdsr_jax import datasets  # pylint: disable=g-import-not-at-top
  source = datasets.load('set5', data_dir=config.data_dir,
                         tfds_dir=config.tfds_dir)
  return {'set5': [source[i]['image'] for i in range(len(source))]}


def paper_psnr(datasets: Sequence[str]) -> Dict[str, float]:
  """{'set5/x2': paper VDSR PSNR, ...} if the reference table is there."""
  from vdsr_jax import evaluation  # pylint: disable=g-import-not-at-top
  try:
    table = evaluation.load_paper_table()
  except Exception:  # pylint: disable=broad-except
    return {}
  return {f'{name}/x{s}': row['vdsr_psnr'] for (name, s), row in table.items()
          if name in datasets and 'vdsr_psnr' in row}


class _StopRequest:
  """SIGINT (Ctrl-C) or SIGTERM asks the loop to save and stop.

  SIGTERM is what schedulers send before they kill a job (SLURM, Kubernetes,
  preemptible VMs, `timeout`), so a preempted run keeps its progress. A
  second signal aborts without saving.
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.signal_number = None  # the first signal received
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.signal_number is not None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested:
      raise KeyboardInterrupt
    self.signal_number = signum
    tqdm.tqdm.write(f'{signal.Signals(signum).name}: saving a checkpoint '
                    'after this step (a second signal aborts without '
                    'saving).')

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def _stop_anywhere(signal_number: Optional[int], out_of_time: bool
                   ) -> Tuple[Optional[int], bool]:
  """Whether any process got a stop signal (which; None if none) or ran out
  of time. Every process must call it at the same step."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  votes = multihost_utils.process_allgather(
      np.array([signal_number or 0, int(out_of_time)], np.int32))
  votes = np.asarray(votes).reshape(-1, 2).max(axis=0)
  return int(votes[0]) or None, bool(votes[1])


class _OutOfTime(Exception):
  """The loop's way out when `time_limit` has passed."""


class _StopAtStep(Exception):
  """The loop's way out after step `stop_at_step`."""


class _Metrics:
  """Step metrics: fetched lazily, checked for finiteness, averaged to log."""

  def __init__(self):
    self.pending = []  # (step, device metrics), not fetched yet
    self.fetched = []  # (step, host metrics), not logged yet
    self.last_log = (None, time.time())  # (step, time)

  def add(self, step: int, metrics) -> None:
    """Queues a step's metrics, first waiting for the step that is
    MAX_STEPS_IN_FLIGHT older to finish (without fetching its metrics)."""
    self.pending.append((step, metrics))
    if len(self.pending) > MAX_STEPS_IN_FLIGHT:
      jax.block_until_ready(self.pending[-MAX_STEPS_IN_FLIGHT - 1][1])

  def check(self) -> None:
    """Fetches pending metrics; raises TrainingError on a non-finite step."""
    if not self.pending:
      return
    host = jax.device_get([m for _, m in self.pending])
    steps = [s for s, _ in self.pending]
    self.pending = []
    for step, m in zip(steps, host):
      if not bool(m['finite']):
        raise TrainingError(
            f'Training diverged at step {step}: loss {float(m["loss"]):.4g}, '
            f'gradient norm {float(m["grad_norm"]):.4g}, lr '
            f'{float(m["lr"]):.4g}.')
      self.fetched.append((step, m))

  def unlogged(self) -> bool:
    """Whether steps have run since the last record."""
    return bool(self.pending or self.fetched)

  def summary(self, step: int) -> Dict[str, float]:
    """Means since the last record, the last lr, and steps per second."""
    self.check()
    now = time.time()
    prev_step, prev_time = self.last_log
    n = len(self.fetched)
    out = {
        'loss': float(np.mean([float(m['loss']) for _, m in self.fetched])),
        'grad_norm': float(np.mean([float(m['grad_norm'])
                                    for _, m in self.fetched])),
        'lr': float(self.fetched[-1][1]['lr']),
    }
    if prev_step is not None and step > prev_step:
      out['steps_per_sec'] = (step - prev_step) / max(now - prev_time, 1e-9)
    else:
      out['steps_per_sec'] = n / max(now - prev_time, 1e-9)
    self.fetched = []
    self.last_log = (step, now)
    return out


def input_workers(config: train_config.TrainConfig, platform: str) -> int:
  """The number of processes that build a run's training batches.

  `config.input_workers`, or for -1: none when training on the CPU (the
  step needs every core) and 2 on an accelerator, where building a batch in
  the training process (~5 ms, mostly Python) would hold the interpreter
  lock that the loop needs to keep the device busy.
  """
  if config.input_workers >= 0:
    return config.input_workers
  return 0 if platform == 'cpu' or (os.cpu_count() or 1) < 4 else 2


class _Run:
  """One training run's moving parts; `train_and_evaluate` drives it."""

  def __init__(self, config, workdir, mesh, manager, state, start, step_fn,
               train_images, eval_images, evaluating, changed_flags=None,
               deadline=None):
    self.config = config
    self.deadline = deadline  # time.monotonic() to stop by; None: no limit
    self.workdir = workdir
    self.mesh = mesh
    self.manager = manager
    self.state = state
    self.start = start
    self.eval_images = eval_images
    self.evaluating = evaluating
    self.primary = jax.process_index() == 0
    self.last_saved = start if start else None
    self.last_eval = None
    self.last_loss = None
    self.step_fn = step_fn
    self.metrics = _Metrics()
    platform = mesh.devices.flat[0].platform
    workers = input_workers(config, platform)
    try:
      self.pipeline = input_pipeline.PatchPipeline(
          train_images, config.pipeline_config(), start_step=start,
          process_index=jax.process_index(),
          process_count=jax.process_count(), prefetch=config.prefetch,
          workers=workers)
    except ValueError as e:
      raise train_config.ConfigError(str(e)) from None
    self.reporter = reporting.Reporter(workdir, start_step=start,
                                       enabled=self.primary)
    conv_method = conv.resolve_method(config.features, config.features)
    self.reporter.write_session(start, {
        'conv': conv_method,
        # Which build of the CPU Winograd kernels ran (AVX-512 or AVX2): it
        # sets a session's speed as much as the machine does.
        **({'winograd_isa': dnnl.winograd_isa()}
           if conv_method == 'native_winograd' else {}),
        'platform': platform,
        'device_kind': mesh.devices.flat[0].device_kind,
        'input_workers': workers,
        'devices': int(mesh.devices.size),
        'processes': jax.process_count(),
        **reporting.cpu_info(),
        **({'changed_flags': changed_flags} if changed_flags else {})})
    self.bar = tqdm.tqdm(total=config.total_steps, initial=start, unit='step',
                         dynamic_ncols=True,
                         disable=not (self.primary and config.progress))

  def close(self):
    self.pipeline.close()
    self.bar.close()
    self.reporter.close()

  @property
  def step(self) -> int:
    return int(jax.device_get(self.state.step))

  def save(self):
    self.metrics.check()  # never save a state that follows a non-finite step
    meta = {'next_step': self.pipeline.next_step,
            'architecture': train_config.architecture(self.config)}
    self.last_saved = checkpointing.save(self.manager, self.state.to_dict(),
                                         meta)

  def evaluate(self, step: int):
    from vdsr_jax import evaluation  # pylint: disable=g-import-not-at-top
    self.metrics.check()
    self.last_eval = evaluation.evaluate(
        'vdsr', host_params(self.state.params),
        datasets=list(self.eval_images), scales=self.config.eval_scales,
        images=self.eval_images, progress=False)
    self.reporter.write_eval(step, self.last_eval)
    psnr = reporting.flat_psnr(self.last_eval)
    tqdm.tqdm.write(f'step {step}: ' + ', '.join(
        f'{k} {v:.2f} dB' for k, v in psnr.items()))

  def _diverged(self, error: TrainingError) -> TrainingError:
    where = (f'the last good checkpoint (step {self.last_saved}) in '
             f'{checkpointing.checkpoint_dir(self.workdir)} is intact'
             if self.last_saved is not None else 'no checkpoint was saved')
    return TrainingError(
        f'{error} Stopped without saving; {where}. Lower --learning_rate or '
        'clip gradients (--clip_mode, --clip_theta).')

  def _out_of_time(self) -> bool:
    return self.deadline is not None and time.monotonic() >= self.deadline

  def _loop(self, stop: _StopRequest):
    c = self.config
    # One process stops at once (after at least one step when out of time,
    # so every session makes progress); several must stop (and save, a
    # collective) at the same step, so they agree at every log step, where
    # the loop waits for the device anyway.
    single = jax.process_count() == 1
    for step in range(self.start, c.total_steps):
      if single and stop.requested:
        raise KeyboardInterrupt
      if single and step > self.start and self._out_of_time():
        raise _OutOfTime
      batch = global_batch(next(self.pipeline), self.mesh)
      self.state, step_metrics = self.step_fn(self.state, batch)
      done = step + 1
      self.metrics.add(done, step_metrics)
      self.bar.update(1)
      final = done == c.total_steps
      if done % c.log_every == 0 or final:
        self._log_train(done)
      if final or (c.checkpoint_every and done % c.checkpoint_every == 0):
        self.save()
      if (self.evaluating and not final and c.eval_every
          and done % c.eval_every == 0):
        self.evaluate(done)
      if done == c.stop_at_step:  # every process at the same step
        raise _StopAtStep
      if not single and not final and done % c.log_every == 0:
        signum, out_of_time = _stop_anywhere(stop.signal_number,
                                             self._out_of_time())
        if signum:
          stop.signal_number = stop.signal_number or signum
          raise KeyboardInterrupt
        if out_of_time:
          raise _OutOfTime

  def _log_train(self, step: int) -> None:
    """One train record: the means of the steps since the last one."""
    scalars = self.metrics.summary(step)
    self.last_loss = scalars['loss']
    self.reporter.write_train(step, scalars)
    self.bar.set_postfix(loss=f'{scalars["loss"]:.3e}',
                         lr=f'{scalars["lr"]:.3g}')

  def _save_before_stopping(self) -> int:
    """Logs the steps run since the last record, then saves the current
    state unless it is saved already; its step."""
    step = self.pipeline.next_step
    try:
      if self.metrics.unlogged():  # else they would be missing from the log
        self._log_train(step)
      if self.last_saved != step:
        self.save()
    except TrainingError as e:
      raise self._diverged(e) from None
    return step

  def train(self):
    """The training loop; a NaN stops it, SIGINT/SIGTERM or the time limit
    save and stop it."""
    stop = _StopRequest()
    try:
      with stop:
        self._loop(stop)
    except TrainingError as e:
      raise self._diverged(e) from None
    except _OutOfTime:
      step = self._save_before_stopping()
      whose = (f'of {self.config.time_limit:g} s' if self._out_of_time()
               else 'of another process')
      raise TimeLimitReached(
          f'Time limit {whose} reached at step '
          f'{step} of {self.config.total_steps}: checkpoint saved in '
          f'{checkpointing.checkpoint_dir(self.workdir)}; run the same '
          'command to continue.', step) from None
    except _StopAtStep:
      step = self._save_before_stopping()
      raise TimeLimitReached(
          f'Stopped at step {step} of {self.config.total_steps} as '
          f'--stop_at_step asked: checkpoint saved in '
          f'{checkpointing.checkpoint_dir(self.workdir)}; run the command '
          'without --stop_at_step (or with a later step) to continue.',
          step) from None
    except KeyboardInterrupt:
      signum = stop.signal_number or signal.SIGINT
      if any(x.is_deleted() for x in jax.tree.leaves(self.state)):
        raise TrainingInterrupted(
            f'Interrupted during step {self.pipeline.next_step}; no '
            f'checkpoint saved (the last is step {self.last_saved}).',
            signum) from None
      step = self._save_before_stopping()
      raise TrainingInterrupted(
          f'Interrupted at step {step}: checkpoint saved in '
          f'{checkpointing.checkpoint_dir(self.workdir)}; run the same '
          'command to resume.', signum) from None
    finally:
      self.bar.close()

  def finish(self) -> Dict[str, Any]:
    """Final evaluation, params.npz, curves.png and the summary table."""
    step = self.step
    params = host_params(self.state.params)
    if self.evaluating:
      earlier = [r for r in reporting.read_metrics(self.workdir)
                 if r.get('kind') == 'eval' and r.get('step') == step]
      if self.start == step and earlier:  # resumed a finished run
        self.last_eval = earlier[-1]['results']
      else:
        self.evaluate(step)
    if self.primary:
      weights_lib.save_npz(params, self.workdir / PARAMS_FILE)
      records = reporting.read_metrics(self.workdir)
      paper = paper_psnr(list(self.eval_images or {}))
      reporting.plot_curves(records, self.workdir / reporting.CURVES_FILE,
                            paper)
      table = reporting.summary_table(records, paper)
      print(f'\nTraining done at step {step} ({self.workdir}):\n{table}',
            flush=True)
    return {'step': step, 'loss': self.last_loss, 'eval': self.last_eval,
            'params': params}


def train_and_evaluate(config: train_config.TrainConfig, workdir, *,
                       train_images: Optional[Sequence[Any]] = None,
                       eval_images: Optional[Mapping[str, Sequence[Any]]] = None,
                       allow_config_change: bool = False
                       ) -> Dict[str, Any]:
  """Trains (or resumes) VDSR in `workdir`, evaluating on Set5.

  Args:
    config: the run's configuration.
    workdir: where checkpoints, metrics, TensorBoard events, flags.txt,
      curves.png and params.npz go. A checkpoint there is resumed.
    train_images: uint8 HR images to train on instead of
      `config.train_dataset` (tests, custom data).
    eval_images: {dataset: uint8 HR images} to evaluate on instead of Set5.
    allow_config_change: resume a run whose training flags (optimiser,
      schedule, data, objective...) differ from `config`'s; without it that
      is a ConfigError. The changes are logged in the session record.

  Returns:
    {'step', 'loss' (last logged), 'eval' (last results or None),
     'params' (numpy)}.

  Raises:
    ConfigError: the config does not fit the devices or the workdir's run.
    TrainingError: a non-finite loss; the last checkpoint stays as it was.
    TrainingInterrupted: Ctrl-C or SIGTERM; a checkpoint was saved first.
    TimeLimitReached: `config.time_limit` seconds (counted from this call)
      passed before the end, or step `config.stop_at_step` was done; a
      checkpoint was saved first.
  """
  started = time.monotonic()
  initialize_distributed(config)
  workdir = pathlib.Path(workdir).expanduser().absolute()
  mesh = make_mesh()
  n_dev, n_proc = mesh.devices.size, jax.process_count()
  if config.batch_size % n_dev or config.batch_size % n_proc:
    raise train_config.ConfigError(
        f'--batch_size={config.batch_size} (global) must be divisible by the '
        f'number of devices ({n_dev}) and of processes ({n_proc}).')
  primary = jax.process_index() == 0

  manager = checkpointing.create_manager(workdir, config.keep_checkpoints)
  changed = train_config.check_resume(
      config, workdir, checkpointing.read_meta(manager), allow_config_change)
  if changed:
    logging.warning('Continuing %s with changed training flags: %s', workdir,
                    changed)
  if primary:
    workdir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(workdir / train_config.FLAGS_FILE,
                      train_config.config_to_flags(config))

  if train_images is None:
    train_images = load_train_images(config)
  if len(train_images) == 0:
    raise train_config.ConfigError('The training set is empty.')
  evaluating = bool(config.eval_scales) and primary
  if evaluating and not config.residual:
    logging.warning('Evaluation assumes a residual model; skipping it for '
                    '--noresidual.')
    evaluating = False
  if evaluating and eval_images is None:
    eval_images = load_eval_images(config)

  logging.info('Training on %d images with %d device(s) (%s) in %d '
               'process(es); workdir %s', len(train_images), n_dev,
               mesh.devices.flat[0].platform, n_proc, workdir)

  model = create_model(config)
  tx, schedule = create_optimizer(config)
  state = create_train_state(config, model, tx, mesh)
  restored = checkpointing.restore_latest(manager, state.to_dict())
  start = 0
  if restored is not None:
    state = TrainState.from_dict(restored[0])
    start = int(restored[1].get('next_step', int(jax.device_get(state.step))))
    logging.info('Resuming from the checkpoint at step %d.', start)

  step_fn = make_train_step(config, model, tx, schedule, mesh)
  run = _Run(config, workdir, mesh, manager, state, start, step_fn,
             train_images, eval_images, evaluating, changed,
             started + config.time_limit if config.time_limit else None)
  try:
    run.train()
    return run.finish()
  finally:
    run.close()
