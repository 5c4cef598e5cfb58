"""What a training run depends on (`TrainConfig`), and its flags.txt.

`TrainConfig` is `experiments/train.py`'s flags, one per field with its help
text, and is validated when built (one `ConfigError` naming the first bad
value). A run's workdir keeps
it as `flags.txt` (`config_to_flags`); `config_from_flags_file` reads that
back, and `check_resume` decides whether a config may continue a run: the
architecture must match, the other training flags too unless overridden,
while the `LOOP_FIELDS` (paths, cadence, process layout) are free.
"""

import dataclasses
import math
import pathlib
import typing
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from vdsr_jax import input_pipeline
from vdsr_jax import models
from vdsr_jax import optimizers

LOSSES = ('mse', 'paper', 'sum')
# Dtypes the network may compute in; parameters, optimiser state, the loss
# and evaluation stay float32 whichever is chosen.
COMPUTE_DTYPES = ('float32', 'bfloat16')
ARCHITECTURE = ('depth', 'features', 'residual')
# Fields that may differ when a run is resumed: where data and files are,
# logging/evaluation/checkpoint cadence, the process layout. Every other
# field shapes the optimisation and must match (or be overridden explicitly).
LOOP_FIELDS = ('data_dir', 'tfds_dir', 'train_images_dir', 'eval_images_dir',
               'prefetch', 'input_workers', 'log_every', 'checkpoint_every',
               'keep_checkpoints', 'eval_every', 'eval_scales', 'progress',
               'time_limit', 'stop_at_step',
               'coordinator_address', 'num_processes', 'process_id')
FLAGS_FILE = 'flags.txt'
# Help of --data_dir/--tfds_dir, which the experiment scripts define too
# (here, not in vdsr_jax.datasets, so that importing this stays TFDS-free).
DATA_DIR_HELP = ('Folder of the source images (Set5/, train291/, ...). '
                 'Default: $VDSR_DATA_DIR, else <repo>/../shared/datasets.')
TFDS_DIR_HELP = ('Where TFDS keeps the prepared datasets. Default: '
                 '$TFDS_DATA_DIR, else ~/tensorflow_datasets.')


class ConfigError(ValueError):
  """The configuration cannot run (bad value, mismatch with devices/run)."""


def _flag(default, help_text: str, choices: Optional[Tuple[str, ...]] = None):
  """A TrainConfig field with its flag's help (and choices, for an enum)."""
  metadata = {'help': help_text}
  if choices is not None:
    metadata['choices'] = tuple(choices)
  return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run depends on; one command flag per field.

  Each field's metadata holds its flag's help (and choices, for an enum):
  experiments/train.py defines its flags from these fields.
  """
  # Data.
  train_dataset: str = _flag(
      'train291', 'Dataset to train on (a vdsr_jax.datasets name).')
  max_train_images: int = _flag(
      0, 'Train on the first N images only (0: all); for quick runs.')
  data_dir: Optional[str] = _flag(None, DATA_DIR_HELP)
  tfds_dir: Optional[str] = _flag(None, TFDS_DIR_HELP)
  train_images_dir: Optional[str] = _flag(
      None, 'Train on the images in this folder (sorted by file name, read '
      'with Pillow, no TFDS) instead of --train_dataset; e.g. the Y planes '
      'written by experiments/export_luminance.py.')
  eval_images_dir: Optional[str] = _flag(
      None, 'Evaluate periodically on the HR images in this folder (e.g. a '
      'copy of Set5/) instead of the set5 dataset.')
  patch_size: int = _flag(
      41, 'Side of the square training patches (41 in the paper).')
  batch_size: int = _flag(
      64, 'Global batch size, over all devices and processes (64 in the '
      'paper).')
  scales: Tuple[int, ...] = _flag(
      (2, 3, 4), 'Integer upscaling factors, all mixed in every batch.')
  augment: bool = _flag(
      True, 'Augment with the 8 rotations by 90 degrees and flips.')
  downscale_factors: Tuple[float, ...] = _flag(
      (1.0,), 'Also train on the HR images downscaled by these factors in (0, '
      '1], e.g. 1.0,0.9,0.8,0.7,0.6; 1.0 alone: off.')
  prefetch: int = _flag(2, 'Batches prepared ahead of the training step.')
  input_workers: int = _flag(
      -1, 'Processes that build the training batches (same batches whatever '
      'the number); 0: one thread of the training process; -1: 0 when '
      'training on the CPU, 2 on a GPU/TPU, where the thread would slow the '
      'loop.')
  seed: int = _flag(0, 'Seeds the initialisation and the stream of batches.')
  # Model.
  depth: int = _flag(20, 'Number of conv layers (20).')
  features: int = _flag(64, 'Filters of the hidden layers (64).')
  residual: bool = _flag(
      True, 'Predict the residual (output = input + network). --noresidual is '
      "the paper's non-residual baseline.")
  compute_dtype: str = _flag(
      'float32', "Dtype of the network's arithmetic. bfloat16: mixed "
      'precision for GPUs/TPUs (float32 parameters, optimiser, loss and '
      'evaluation); slow on CPUs, whose fast kernels here are float32.',
      choices=COMPUTE_DTYPES)
  output_init_scale: float = _flag(
      1.0, "The last layer's initial kernel is He's times this (1: the paper; "
      '0: zeros, so training starts from the bicubic output instead of a '
      'large random residual).')
  init_fan: str = _flag(
      'fan_in', 'He initialisation N(0, 2 / fan) over fan_in (3*3*in '
      'channels, the paper) or fan_out (3*3*out channels, the PyTorch port); '
      'they differ in the first and last layers.',
      choices=tuple(models.INIT_FANS))
  # Objective and optimiser.
  loss: str = _flag(
      'mse', 'mse: mean squared error over all pixels; paper: 1/2 * sum of '
      'squares per patch, averaged over the batch (= 0.5 * patch_size^2 * '
      'mse); sum: squared error summed over the whole batch (= patch_size^2 * '
      "batch_size * mse, the PyTorch port's). Logged loss is always mse.",
      choices=LOSSES)
  optimizer: str = _flag(
      'sgd', "sgd: the paper's SGD with momentum; adam: Adam (then use a "
      'small --learning_rate, e.g. 1e-4).', choices=optimizers.OPTIMIZERS)
  learning_rate: float = _flag(0.1, 'Initial learning rate (0.1 in the paper).')
  momentum: float = _flag(0.9, 'SGD momentum.')
  weight_decay: float = _flag(
      1e-4, 'L2 weight decay added to the gradients (after clipping).')
  decay_biases: bool = _flag(
      False, 'Apply weight decay to the biases too (default: kernels only).')
  train_biases: bool = _flag(
      True, 'False: the biases keep their initial value, zero (the bias-free '
      'VDSR of the PyTorch port); their gradients are left out of the '
      'clipping norm.')
  clip_mode: str = _flag(
      'global_norm', 'Adjustable gradient clipping to clip_theta / lr: '
      'global_norm clips the global gradient norm, value clips each element '
      '(the paper), none disables it.', choices=optimizers.CLIP_MODES)
  clip_theta: float = _flag(
      0.4, 'Clipping constant theta; the threshold is theta / lr.')
  clip_adjustable: bool = _flag(
      True, "True: the paper's threshold theta / lr. False: a fixed threshold "
      "theta (Caffe's clip_gradients), so steps shrink with every "
      'learning-rate decay.')
  total_steps: int = _flag(
      9960, "Number of updates (9960 of batch 64 = the paper's 80 epochs in "
      "the public reimplementations' accounting).")
  decay_every: int = _flag(
      0, 'Divide the learning rate every N steps; 0: every quarter of '
      'total_steps (the paper: every 20 of 80 epochs).')
  decay_boundaries: Tuple[int, ...] = _flag(
      (), 'Explicit steps at which to divide the learning rate (overrides '
      '--decay_every).')
  decay_factor: float = _flag(
      0.1, 'Multiply the learning rate by this at each boundary.')
  # Loop.
  log_every: int = _flag(
      50, 'Write a metrics record (means since the last one) every N steps.')
  checkpoint_every: int = _flag(
      1000, 'Save a checkpoint every N steps (0: only at the end).')
  keep_checkpoints: int = _flag(3, 'Keep the last N checkpoints.')
  eval_every: int = _flag(
      1000, 'Evaluate on Set5 every N steps (0: only at the end).')
  eval_scales: Tuple[int, ...] = _flag(
      (2, 3, 4), 'Set5 scales to evaluate (empty: no evaluation).')
  progress: bool = _flag(True, 'Show a progress bar.')
  time_limit: float = _flag(
      0.0, 'Stop once this many seconds have passed since the run started '
      '(loading and compiling included; the flag also takes 540s, 45m, 2.5h; '
      '0: no limit): save a checkpoint and exit with status 75; the same '
      'command continues.')
  stop_at_step: int = _flag(
      0, 'Once this step is done, save a checkpoint and exit with status 75 '
      '(0: never): a run stopped at an exact step, e.g. where another '
      'schedule forks from it. Run without it (or with a later step) to '
      'continue.')
  # Multi-host (all unset: a single process).
  coordinator_address: Optional[str] = _flag(
      None, 'HOST:PORT of process 0, to start jax.distributed.')
  num_processes: Optional[int] = _flag(
      None, 'Number of processes of a multi-host run.')
  process_id: Optional[int] = _flag(
      None, 'Index of this process in a multi-host run.')

  def __post_init__(self):
    for name in list_fields():  # lists given as any sequence: tuples
      object.__setattr__(self, name, tuple(getattr(self, name)))
    problems = list(_problems(self))
    if problems:
      raise ConfigError(problems[0])

  @property
  def boundaries(self) -> Tuple[int, ...]:
    """The learning-rate decay steps in effect."""
    return optimizers.decay_boundaries(self.total_steps, self.decay_every,
                                       self.decay_boundaries)

  def pipeline_config(self) -> input_pipeline.PipelineConfig:
    """The input pipeline settings of this run."""
    return input_pipeline.PipelineConfig(
        patch_size=self.patch_size, batch_size=self.batch_size,
        scales=self.scales, augment=self.augment,
        downscale_factors=self.downscale_factors, seed=self.seed)


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _problems(c: TrainConfig):
  """Yields one message per impossible value, in flag order."""
  def at_least(name, low):
    v = getattr(c, name)
    if not _is_int(v) or v < low:
      return f'--{name} must be an integer >= {low}, got {v!r}.'
    return None

  for name, low in (('max_train_images', 0), ('patch_size', 1),
                    ('batch_size', 1), ('prefetch', 0), ('input_workers', -1),
                    ('seed', 0), ('depth', 2), ('features', 1),
                    ('total_steps', 1), ('decay_every', 0), ('log_every', 1),
                    ('checkpoint_every', 0), ('keep_checkpoints', 1),
                    ('eval_every', 0)):
    message = at_least(name, low)
    if message:
      yield message
  if not c.scales:
    yield '--scales must list at least one scale factor.'
  for s in c.scales:
    if not _is_int(s) or s < 1:
      yield f'--scales must be integers >= 1, got {c.scales!r}.'
      break
  if len(set(c.scales)) != len(c.scales):
    yield f'--scales must be distinct, got {c.scales!r}.'
  if _is_int(c.batch_size) and c.batch_size < len(c.scales):
    yield (f'--batch_size={c.batch_size} cannot hold one patch of each of the '
           f'{len(c.scales)} --scales.')
  if not c.downscale_factors or not all(
      0.0 < f <= 1.0 for f in c.downscale_factors):
    yield ('--downscale_factors must be values in (0, 1], got '
           f'{c.downscale_factors!r}.')
  for f in dataclasses.fields(c):  # the enums: their flags' choices
    choices = f.metadata.get('choices')
    if choices is not None and getattr(c, f.name) not in choices:
      yield (f'--{f.name} must be one of {", ".join(choices)}, '
             f'got {getattr(c, f.name)!r}.')
  if c.decay_biases and not c.train_biases:
    yield ('--decay_biases and --notrain_biases contradict each other: '
           'frozen biases are not decayed.')
  for name in ('learning_rate', 'clip_theta', 'decay_factor'):
    v = getattr(c, name)
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
      yield f'--{name} must be a finite number > 0, got {v!r}.'
  if not 0.0 <= c.momentum < 1.0:
    yield f'--momentum must be in [0, 1), got {c.momentum!r}.'
  for name in ('output_init_scale', 'weight_decay', 'time_limit'):
    v = getattr(c, name)
    if not (isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v) and v >= 0):
      yield f'--{name} must be a finite number >= 0, got {v!r}.'
  if not _is_int(c.stop_at_step) or not (
      c.stop_at_step == 0 or 1 <= c.stop_at_step < c.total_steps):
    yield (f'--stop_at_step must be 0 (none) or a step in [1, '
           f'--total_steps), got {c.stop_at_step!r}.')
  for b in c.decay_boundaries:
    if not _is_int(b) or b < 1:
      yield ('--decay_boundaries must be step numbers >= 1, got '
             f'{c.decay_boundaries!r}.')
      break
  for s in c.eval_scales:
    if not _is_int(s) or s < 2:
      yield (f'--eval_scales must be integers >= 2 (or empty for no '
             f'evaluation), got {c.eval_scales!r}.')
      break
  if c.num_processes is not None and (not _is_int(c.num_processes)
                                      or c.num_processes < 1):
    yield f'--num_processes must be >= 1, got {c.num_processes!r}.'
  elif c.process_id is not None and c.num_processes is not None and not (
      0 <= c.process_id < c.num_processes):
    yield (f'--process_id must be in [0, --num_processes={c.num_processes}),'
           f' got {c.process_id}.')


def config_to_flags(config: TrainConfig) -> str:
  """`config` as absl flagfile lines (usable with --flagfile)."""
  lines = []
  for f in dataclasses.fields(config):
    v = getattr(config, f.name)
    if v is None:
      continue
    if isinstance(v, bool):
      lines.append(f'--{f.name}' if v else f'--no{f.name}')
    elif isinstance(v, tuple):
      lines.append(f'--{f.name}=' + ','.join(str(x) for x in v))
    else:
      lines.append(f'--{f.name}={v}')
  return '\n'.join(lines) + '\n'


def parse_flags_file(text: str) -> Dict[str, str]:
  """Reads `config_to_flags` output back as {name: value string}."""
  values = {}
  for line in text.splitlines():
    line = line.strip()
    if not line.startswith('--'):
      continue
    name, eq, value = line[2:].partition('=')
    if not eq:
      if name.startswith('no') and name[2:] in TrainConfig.__dataclass_fields__:
        name, value = name[2:], 'False'
      else:
        value = 'True'
    values[name] = value
  return values


def read_flags_file(text: str) -> Dict[str, str]:
  """A run's flags.txt as {name: value string}, complete.

  A field missing from the file did not exist when the run was started;
  every field added since has a default that keeps the earlier behaviour
  (e.g. `compute_dtype=float32`), so the missing ones read as the defaults.
  """
  return {**parse_flags_file(config_to_flags(TrainConfig())),
          **parse_flags_file(text)}


def field_types() -> Dict[str, Any]:
  """Each TrainConfig field's type, Optional[X] read as X."""
  types = {}
  for name, kind in typing.get_type_hints(TrainConfig).items():
    if typing.get_origin(kind) is typing.Union:
      kind = next(a for a in typing.get_args(kind) if a is not type(None))
    types[name] = kind
  return types


def list_fields() -> Dict[str, type]:
  """{field: item type} of the fields given as comma-separated lists."""
  return {name: typing.get_args(kind)[0]
          for name, kind in field_types().items()
          if typing.get_origin(kind) is tuple}


def _typed_value(name: str, value: str, kind) -> Any:
  """`value` (a flags-file string) as a `kind` (from `field_types`)."""
  try:
    if kind is bool:
      if value.lower() not in ('true', 'false'):
        raise ValueError(value)
      return value.lower() == 'true'
    if typing.get_origin(kind) is tuple:
      item = typing.get_args(kind)[0]
      return tuple(item(v) for v in value.split(',') if v)
    return kind(value)
  except ValueError:
    if typing.get_origin(kind) is tuple:
      what = f'a comma-separated list of {typing.get_args(kind)[0].__name__}'
    else:
      what = kind.__name__
    raise ConfigError(
        f'--{name}={value} in a flags file cannot be read as {what}.'
    ) from None


def config_from_flags_file(text: str) -> TrainConfig:
  """A run's flags.txt as the (validated) TrainConfig it describes.

  Missing fields read as their defaults (see `read_flags_file`); a flag
  TrainConfig does not know is a ConfigError.
  """
  kinds = field_types()
  values = read_flags_file(text)
  unknown = sorted(set(values) - set(kinds))
  if unknown:
    raise ConfigError(f'The flags file names --{unknown[0]}, which is not a '
                      'training flag.')
  return TrainConfig(**{name: _typed_value(name, value, kinds[name])
                        for name, value in values.items()})


def architecture(config: TrainConfig) -> Dict[str, Any]:
  """The fields a checkpoint must agree with to be resumed."""
  return {name: getattr(config, name) for name in ARCHITECTURE}


def check_resume(config: TrainConfig, workdir: pathlib.Path,
                 meta: Optional[Mapping[str, Any]],
                 allow_config_change: bool = False) -> Dict[str, Any]:
  """Checks that `config` may resume the run in `workdir`.

  Args:
    config: the configuration asked for now.
    workdir: the run's folder (its flags.txt is the previous configuration).
    meta: the latest checkpoint's metadata; None if there is no checkpoint.
    allow_config_change: accept different training flags (not architecture).

  Returns:
    {field: [value there, value now]} for the training flags that differ
    (empty unless `allow_config_change`).

  Raises:
    ConfigError: another architecture, other training flags without
      `allow_config_change`, or a `stop_at_step` the run has passed.
  """
  if meta is None:
    return {}
  at = meta.get('next_step')  # every checkpoint train.py saves has it
  if config.stop_at_step and at is not None and at >= config.stop_at_step:
    raise ConfigError(
        f'--stop_at_step={config.stop_at_step}, but the run in {workdir} is '
        f'at step {at} already; give a later step, or none to continue.')
  flags_path = workdir / FLAGS_FILE
  before = (read_flags_file(flags_path.read_text())
            if flags_path.exists() else {})
  if 'architecture' in meta:
    before.update({k: str(v) for k, v in meta['architecture'].items()})
  now = parse_flags_file(config_to_flags(config))
  differ = [k for k in TrainConfig.__dataclass_fields__
            if k in before and k in now and before[k] != now[k]
            and k not in LOOP_FIELDS]
  arch = [k for k in differ if k in ARCHITECTURE]
  if arch:
    diffs = ', '.join(f'--{k}={before[k]} there, {now[k]} now' for k in arch)
    raise ConfigError(
        f'{workdir} holds a checkpoint of another architecture ({diffs}). '
        'Use a new --workdir, or the same architecture flags to resume.')
  if differ and not allow_config_change:
    diffs = ', '.join(f'--{k}={before[k]} there, {now[k]} now'
                      for k in differ)
    raise ConfigError(
        f'{workdir} holds a run with other training flags ({diffs}). Use the '
        'same flags to resume it, a new --workdir, or --allow_config_change '
        'to continue it with the new ones (recorded in metrics.jsonl).')
  return {k: [before[k], now[k]] for k in differ}
