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

import dataclasses
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
from vdsr_jax import train
from vdsr_jax import train_config
from vdsr_jax import weights
# pylint: enable=g-import-not-at-top,wrong-import-position

flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics.jsonl, TensorBoard '
    'events, flags.txt, curves.png and params.npz. A checkpoint already there '
    'is resumed.')
flags.DEFINE_bool('allow_config_change', False,
                  'Resume the run in --workdir even though training flags '
                  '(optimiser, schedule, objective, data...) differ from the '
                  'ones it was started with; the changes are recorded in '
                  'metrics.jsonl. Architecture flags must always match.')


def define_config_flags() -> None:
  """One flag per TrainConfig field, with its default, type and help."""
  lists = train_config.list_fields()
  types = train_config.field_types()
  define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
            float: flags.DEFINE_float, str: flags.DEFINE_string}
  for field in dataclasses.fields(train_config.TrainConfig):
    name, default, help_text = field.name, field.default, field.metadata['help']
    if name == 'time_limit':  # a duration: 540s, 45m, 2.5h (parse_duration)
      flags.DEFINE_string(name, f'{default:g}', help_text)
    elif 'choices' in field.metadata:
      flags.DEFINE_enum(name, default, list(field.metadata['choices']),
                        help_text)
    elif name in lists:
      flags.DEFINE_list(name, [str(v) for v in default], help_text)
    else:
      define[types[name]](name, default, help_text)


define_config_flags()
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
