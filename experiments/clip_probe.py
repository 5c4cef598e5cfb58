r"""Short probes of objective / clipping settings on the real model and data.

Trains the full-size VDSR from the same initialisation for a few steps under
each named setting and prints the batch MSE trajectory, to see in minutes
whether a setting diverges, stalls or descends:

  python experiments/clip_probe.py --settings=paper_theta0.4,paper_theta0.01,mse_theta0.4 \
      --steps=30 --batch_size=16

This is a diagnostic, not a result: 30 steps say nothing about final PSNR.
"""

import pathlib
import sys
import time

from absl import app
from absl import flags
import numpy as np

try:
  import vdsr_jax  # pylint: disable=unused-import
except ImportError:
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from vdsr_jax import datasets  # pylint: disable=g-import-not-at-top
from vdsr_jax import input_pipeline
from vdsr_jax import train

SETTINGS = {
    'paper_theta0.4': dict(loss='paper', clip_theta=0.4),
    'paper_theta0.01': dict(loss='paper', clip_theta=0.01),
    'mse_theta0.4': dict(loss='mse', clip_theta=0.4),
    'adam_mse': dict(loss='mse', optimizer='adam', learning_rate=1e-4,
                     clip_mode='none'),
}

_SETTINGS = flags.DEFINE_list('settings', list(SETTINGS),
                              f'Which settings to probe: {list(SETTINGS)}.')
_STEPS = flags.DEFINE_integer('steps', 30, 'Steps per setting.')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Global batch size.')
_EVERY_NTH_IMAGE = flags.DEFINE_integer(
    'every_nth_image', 5, 'Use every n-th train291 image (faster start).')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Source images folder.')
_TFDS_DIR = flags.DEFINE_string('tfds_dir', None, 'Prepared TFDS folder.')


def main(argv):
  del argv
  unknown = set(_SETTINGS.value) - set(SETTINGS)
  if unknown:
    raise app.UsageError(f'unknown settings {sorted(unknown)}')
  source = datasets.load('train291', data_dir=_DATA_DIR.value,
                         tfds_dir=_TFDS_DIR.value)
  images = [source[i]['image']
            for i in range(0, len(source), _EVERY_NTH_IMAGE.value)]
  prepared = input_pipeline.prepare_images(images)
  for name in _SETTINGS.value:
    config = train.TrainConfig(batch_size=_BATCH.value, **SETTINGS[name])
    model = train.create_model(config)
    tx, schedule = train.create_optimizer(config)
    mesh = train.make_mesh()
    state = train.create_train_state(config, model, tx, mesh)
    step = train.make_train_step(config, model, tx, schedule, mesh)
    losses, start = [], time.time()
    for k in range(_STEPS.value):
      batch = input_pipeline.make_batch(prepared, config.pipeline_config(), k)
      state, metrics = step(state, train.global_batch(batch, mesh))
      losses.append(float(metrics['loss']))
    bicubic = float(np.mean((batch['inputs'] - batch['targets'])**2))
    print(f'{name}: batch MSE every 3rd step '
          f'{[round(v, 5) for v in losses[::3]]}; mean of last 5 '
          f'{np.mean(losses[-5:]):.5f} (bicubic on the last batch '
          f'{bicubic:.5f}); last grad norm {float(metrics["grad_norm"]):.4g}; '
          f'{time.time() - start:.0f} s', flush=True)


if __name__ == '__main__':
  app.run(main)
