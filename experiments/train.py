r"""Trains VDSR with the paper's recipe (Kim, Lee & Lee, CVPR 2016).

  python experiments/train.py --flagfile=experiments/configs/vdsr_paper.flags \
      --workdir=/tmp/vdsr

Rerunning the same command resumes from the last checkpoint in --workdir.
Multi-host: run one process per host with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I (same flags otherwise). Errors in flags or
data stop the program with one line on stderr and exit status 1 (2 for flag
syntax); Ctrl-C (SIGINT) or SIGTERM saves a checkpoint and exits with
status 130 or 143 (in a multi-host run every process stops at the same
step, the next --log_every step).

--time_limit=2h (or 45m, 540s) stops a long run cleanly inside a time budget
(a Colab session, a lent GPU, a batch job's wall limit): once that much time
has passed since the run started, it saves a checkpoint and exits with status
75 (EX_TEMPFAIL, "try again"); the same command continues it, so

  until python experiments/train.py --flagfile=... --time_limit=50m; do
    [ $? -eq 75 ] || exit 1; done

trains to the end in 50-minute pieces. --stop_at_step=N does the same at an
exact step (the checkpoint where another schedule forks from this run).
"""

import logging as std_logging
import math
import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging

try:
  import vdsr_jax  # pylint: disable=unused-import
except ImportError:  # Run from a checkout without installing.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from vdsr_jax import models
from vdsr_jax import optimizers
from vdsr_jax import train
from vdsr_jax import train_config
from vdsr_jax import weights
# pylint: enable=g-import-not-at-top,wrong-import-position

_D = train_config.TrainConfig()  # defaults

flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics.jsonl, TensorBoard '
    'events, flags.txt, curves.png and params.npz. A checkpoint already there '
    'is resumed.')

# Data.
flags.DEFINE_string('train_dataset', _D.train_dataset,
                    'Dataset to train on (a vdsr_jax.datasets name).')
flags.DEFINE_integer('max_train_images', _D.max_train_images,
                     'Train on the first N images only (0: all); for quick '
                     'runs.')
flags.DEFINE_string('data_dir', None,
                    'Folder of the source images (Set5/, train291/, ...). '
                    'Default: $VDSR_DATA_DIR, else <repo>/../shared/datasets.')
flags.DEFINE_string('tfds_dir', None,
                    'Where TFDS keeps the prepared datasets. Default: '
                    '$TFDS_DATA_DIR, else ~/tensorflow_datasets.')
flags.DEFINE_bool('allow_config_change', False,
                  'Resume the run in --workdir even though training flags '
                  '(optimiser, schedule, objective, data...) differ from the '
                  'ones it was started with; the changes are recorded in '
                  'metrics.jsonl. Architecture flags must always match.')
flags.DEFINE_string('train_images_dir', None,
                    'Train on the images in this folder (sorted by file name, '
                    'read with Pillow, no TFDS) instead of --train_dataset; '
                    'e.g. the Y planes written by '
                    'experiments/export_luminance.py.')
flags.DEFINE_string('eval_images_dir', None,
                    'Evaluate periodically on the HR images in this folder '
                    '(e.g. a copy of Set5/) instead of the set5 dataset.')
flags.DEFINE_integer('patch_size', _D.patch_size,
                     'Side of the square training patches (41 in the paper).')
flags.DEFINE_integer('batch_size', _D.batch_size,
                     'Global batch size, over all devices and processes (64 '
                     'in the paper).')
flags.DEFINE_list('scales', [str(s) for s in _D.scales],
                  'Integer upscaling factors, all mixed in every batch.')
flags.DEFINE_bool('augment', _D.augment,
                  'Augment with the 8 rotations by 90 degrees and flips.')
flags.DEFINE_list('downscale_factors', [str(f) for f in _D.downscale_factors],
                  'Also train on the HR images downscaled by these factors in '
                  '(0, 1], e.g. 1.0,0.9,0.8,0.7,0.6; 1.0 alone: off.')
flags.DEFINE_integer('prefetch', _D.prefetch,
                     'Batches prepared ahead of the training step.')
flags.DEFINE_integer('input_workers', _D.input_workers,
                     'Processes that build the training batches (same '
                     'batches whatever the number); 0: one thread of the '
                     'training process; -1: 0 when training on the CPU, 2 on '
                     'a GPU/TPU, where the thread would slow the loop.')
flags.DEFINE_integer('seed', _D.seed,
                     'Seeds the initialisation and the stream of batches.')

# Model.
flags.DEFINE_integer('depth', _D.depth, 'Number of conv layers (20).')
flags.DEFINE_integer('features', _D.features,
                     'Filters of the hidden layers (64).')
flags.DEFINE_bool('residual', _D.residual,
                  'Predict the residual (output = input + network). '
                  '--noresidual is the paper\'s non-residual baseline.')
flags.DEFINE_float('output_init_scale', _D.output_init_scale,
                   'The last layer\'s initial kernel is He\'s times this (1: '
                   'the paper; 0: zeros, so training starts from the bicubic '
                   'output instead of a large random residual).')
flags.DEFINE_enum('init_fan', _D.init_fan, list(models.INIT_FANS),
                  'He initialisation N(0, 2 / fan) over fan_in (3*3*in '
                  'channels, the paper) or fan_out (3*3*out channels, the '
                  'PyTorch port); they differ in the first and last layers.')
flags.DEFINE_enum('compute_dtype', _D.compute_dtype,
                  train_config.COMPUTE_DTYPES,
                  'Dtype of the network\'s arithmetic. bfloat16: mixed '
                  'precision for GPUs/TPUs (float32 parameters, optimiser, '
                  'loss and evaluation); slow on CPUs, whose fast kernels '
                  'here are float32.')

# Objective and optimiser.
flags.DEFINE_enum('loss', _D.loss, train_config.LOSSES,
                  'mse: mean squared error over all pixels; paper: '
                  '1/2 * sum of squares per patch, averaged over the batch '
                  '(= 0.5 * patch_size^2 * mse); sum: squared error summed '
                  'over the whole batch (= patch_size^2 * batch_size * mse, '
                  'the PyTorch port\'s). Logged loss is always mse.')
flags.DEFINE_enum('optimizer', _D.optimizer, optimizers.OPTIMIZERS,
                  'sgd: the paper\'s SGD with momentum; adam: Adam (then use '
                  'a small --learning_rate, e.g. 1e-4).')
flags.DEFINE_float('learning_rate', _D.learning_rate,
                   'Initial learning rate (0.1 in the paper).')
flags.DEFINE_float('momentum', _D.momentum, 'SGD momentum.')
flags.DEFINE_float('weight_decay', _D.weight_decay,
                   'L2 weight decay added to the gradients (after clipping).')
flags.DEFINE_bool('decay_biases', _D.decay_biases,
                  'Apply weight decay to the biases too (default: kernels '
                  'only).')
flags.DEFINE_bool('train_biases', _D.train_biases,
                  'False: the biases keep their initial value, zero (the '
                  'bias-free VDSR of the PyTorch port); their gradients are '
                  'left out of the clipping norm.')
flags.DEFINE_enum('clip_mode', _D.clip_mode, optimizers.CLIP_MODES,
                  'Adjustable gradient clipping to clip_theta / lr: '
                  'global_norm clips the global gradient norm, value clips '
                  'each element (the paper), none disables it.')
flags.DEFINE_float('clip_theta', _D.clip_theta,
                   'Clipping constant theta; the threshold is theta / lr.')
flags.DEFINE_bool('clip_adjustable', _D.clip_adjustable,
                  'True: the paper\'s threshold theta / lr. False: a fixed '
                  'threshold theta (Caffe\'s clip_gradients), so steps shrink '
                  'with every learning-rate decay.')
flags.DEFINE_integer('total_steps', _D.total_steps,
                     'Number of updates (9960 of batch 64 = the paper\'s 80 '
                     'epochs in the public reimplementations\' accounting).')
flags.DEFINE_integer('decay_every', _D.decay_every,
                     'Divide the learning rate every N steps; 0: every '
                     'quarter of total_steps (the paper: every 20 of 80 '
                     'epochs).')
flags.DEFINE_list('decay_boundaries', [],
                  'Explicit steps at which to divide the learning rate '
                  '(overrides --decay_every).')
flags.DEFINE_float('decay_factor', _D.decay_factor,
                   'Multiply the learning rate by this at each boundary.')

# Loop.
flags.DEFINE_integer('log_every', _D.log_every,
                     'Write a metrics record (means since the last one) '
                     'every N steps.')
flags.DEFINE_integer('checkpoint_every', _D.checkpoint_every,
                     'Save a checkpoint every N steps (0: only at the end).')
flags.DEFINE_integer('keep_checkpoints', _D.keep_checkpoints,
                     'Keep the last N checkpoints.')
flags.DEFINE_integer('eval_every', _D.eval_every,
                     'Evaluate on Set5 every N steps (0: only at the end).')
flags.DEFINE_list('eval_scales', [str(s) for s in _D.eval_scales],
                  'Set5 scales to evaluate (empty: no evaluation).')
flags.DEFINE_bool('progress', _D.progress, 'Show a progress bar.')
flags.DEFINE_string('time_limit', '0',
                    'Stop once this much time has passed since the run '
                    'started (loading and compiling included; e.g. 540s, 45m, '
                    '2.5h; a plain number is seconds; 0: no limit): save a '
                    'checkpoint and exit with status 75; the same command '
                    'continues.')
flags.DEFINE_integer('stop_at_step', _D.stop_at_step,
                     'Once this step is done, save a checkpoint and exit '
                     'with status 75 (0: never): a run stopped at an exact '
                     'step, e.g. where another schedule forks from it. Run '
                     'without it (or with a later step) to continue.')

# Multi-host.
flags.DEFINE_string('coordinator_address', None,
                    'HOST:PORT of process 0, to start jax.distributed.')
flags.DEFINE_integer('num_processes', None,
                     'Number of processes of a multi-host run.')
flags.DEFINE_integer('process_id', None,
                     'Index of this process in a multi-host run.')

flags.mark_flag_as_required('workdir')

FLAGS = flags.FLAGS
EXIT_TIME_LIMIT = 75  # sysexits.h EX_TEMPFAIL: not finished, run it again


def _fail(message: str, code: int = 1) -> None:
  """Exits with one line on stderr."""
  name = os.path.basename(sys.argv[0]) or 'train.py'
  message = ' '.join(str(message).split())
  sys.stderr.write(f'{name}: error: {message}\n')
  sys.exit(code)


def _numbers(name: str, kind):
  values = []
  for item in FLAGS[name].value:
    try:
      values.append(kind(item))
    except ValueError:
      raise train_config.ConfigError(
          f'--{name} must be a comma-separated list of '
          f'{"integers" if kind is int else "numbers"}, got '
          f'{",".join(FLAGS[name].value)!r}.') from None
  return tuple(values)


_DURATION_UNITS = {'': 1.0, 's': 1.0, 'm': 60.0, 'h': 3600.0}


def parse_duration(text: str) -> float:
  """'540', '540s', '45m', '2.5h' -> seconds; ConfigError otherwise."""
  value = str(text).strip().lower()
  unit = value[-1:] if value[-1:] in ('s', 'm', 'h') else ''
  try:
    seconds = float(value[:len(value) - len(unit)]) * _DURATION_UNITS[unit]
  except ValueError:
    seconds = float('nan')
  if not (math.isfinite(seconds) and seconds >= 0):
    raise train_config.ConfigError(
        f'--time_limit must be a duration such as 540s, 45m or 2.5h (a plain '
        f'number is seconds; 0: no limit), got {text!r}.')
  return seconds


def config_from_flags() -> train_config.TrainConfig:
  """Builds the TrainConfig from the parsed flags (same names)."""
  lists = train_config.list_fields()  # scales, decay_boundaries, ...
  values = {}
  for name in train_config.TrainConfig.__dataclass_fields__:
    if name in lists:
      values[name] = _numbers(name, lists[name])
    elif name == 'time_limit':
      values[name] = parse_duration(FLAGS[name].value)
    else:
      values[name] = FLAGS[name].value
  return train_config.TrainConfig(**values)


def parse_flags(argv):
  """absl parsing, but a bad flag is one line on stderr, not a traceback."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(f"{str(e).replace('ERROR:: ', '')} (see --helpfull)", code=2)


class _OwnInfoOnly(std_logging.Filter):
  """Shows vdsr_jax's INFO lines, and only warnings from libraries (orbax)."""

  def filter(self, record):
    return (record.levelno >= std_logging.WARNING
            or 'vdsr_jax' in record.pathname)


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}; every option is a --flag.', 2)
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
  try:
    config = config_from_flags()
    train.train_and_evaluate(config, FLAGS.workdir,
                             allow_config_change=FLAGS.allow_config_change)
  except train.TrainingInterrupted as e:
    sys.stderr.write(f'{e}\n')
    sys.exit(128 + e.signal_number)  # 130 after Ctrl-C, 143 after SIGTERM
  except train.TimeLimitReached as e:
    sys.stderr.write(f'{e}\n')
    sys.exit(EXIT_TIME_LIMIT)
  except (train_config.ConfigError, train.TrainingError,
          weights.WeightsError) as e:
    _fail(str(e))
  except ValueError as e:
    # vdsr_jax.datasets (TFDS) is imported only when a dataset is loaded.
    datasets = sys.modules.get('vdsr_jax.datasets')
    if datasets is None or not isinstance(e, datasets.DatasetError):
      raise
    _fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
