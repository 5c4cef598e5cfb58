r"""Short probes of objective / clipping settings on the real model and data.

Trains the full-size VDSR from the same initialisation for a few steps under
each named setting and prints the batch MSE trajectory, to see in minutes
whether a setting diverges, stalls or descends:

  python experiments/clip_probe.py --settings=paper_theta0.4,paper_theta0.01,mse_theta0.4 \
      --steps=30 --batch_size=16

With --weights the probes start from trained weights instead (momentum
zero), e.g. to compare the loss level each element-wise theta settles at
under the first phase's learning rate, from a good point:

  python experiments/clip_probe.py --weights=vdsr_jax/pretrained/vdsr_291.npz \
      --settings=value_theta1e-4,value_theta3e-5,value_theta1e-5 --steps=400 \
      --batch_size=64 --every_nth_image=1 --window=100

This is a diagnostic, not a result: a few hundred steps say nothing sure
about final PSNR.
"""

import pathlib
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

try:
  import vdsr_jax  # pylint: disable=unused-import
except ImportError:
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from vdsr_jax import datasets  # pylint: disable=g-import-not-at-top
from vdsr_jax import input_pipeline
from vdsr_jax import models
from vdsr_jax import train
from vdsr_jax import train_config
from vdsr_jax import weights

SETTINGS = {
    'paper_theta0.4': dict(loss='paper', clip_theta=0.4),
    'paper_theta0.01': dict(loss='paper', clip_theta=0.01),
    'mse_theta0.4': dict(loss='mse', clip_theta=0.4),
    'adam_mse': dict(loss='mse', optimizer='adam', learning_rate=1e-4,
                     clip_mode='none'),
    # The paper flagfile's objective and element-wise clipping, three thetas.
    'value_theta1e-4': dict(loss='paper', clip_mode='value', clip_theta=1e-4),
    'value_theta3e-5': dict(loss='paper', clip_mode='value', clip_theta=3e-5),
    'value_theta1e-5': dict(loss='paper', clip_mode='value', clip_theta=1e-5),
    # The same as value_theta1e-4 from a zero last layer (output = bicubic).
    'value_theta1e-4_zero_out': dict(loss='paper', clip_mode='value',
                                     clip_theta=1e-4, output_init_scale=0.0),
}

_SETTINGS = flags.DEFINE_list('settings', list(SETTINGS),
                              f'Which settings to probe: {list(SETTINGS)}.')
_STEPS = flags.DEFINE_integer('steps', 30, 'Steps per setting.')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Global batch size.')
_EVERY_NTH_IMAGE = flags.DEFINE_integer(
    'every_nth_image', 5, 'Use every n-th train291 image (faster start).')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                train_config.DATA_DIR_HELP)
_TFDS_DIR = flags.DEFINE_string('tfds_dir', None,
                                train_config.TFDS_DIR_HELP)
_IMAGES_DIR = flags.DEFINE_string(
    'train_images_dir', None, 'A folder of training images to use instead '
    'of the train291 dataset (e.g. experiments/export_luminance.py output).')
_WEIGHTS = flags.DEFINE_string(
    'weights', None, 'Start every probe from these params (.npz, .mat, .pth or '
    'orbax checkpoint) instead of the initialisation.')
_DEAD_BATCHES = flags.DEFINE_integer(
    'dead_batches', 0, 'Also count the dead channels of each probe\'s '
    'final params (ReLU output 0 on all of this many batches).')
_WINDOW = flags.DEFINE_integer(
    'window', 0, 'Also print the mean batch MSE over consecutive windows of '
    'this many steps (0: no).')


def main(argv):
  del argv
  unknown = set(_SETTINGS.value) - set(SETTINGS)
  if unknown:
    raise app.UsageError(f'unknown settings {sorted(unknown)}')
  if _IMAGES_DIR.value:
    images = train.read_image_folder(
        _IMAGES_DIR.value)[::_EVERY_NTH_IMAGE.value]
  else:  # decode only the images used
    examples = datasets.load('train291', data_dir=_DATA_DIR.value,
                             tfds_dir=_TFDS_DIR.value)
    images = [examples[i]['image']
              for i in range(0, len(examples), _EVERY_NTH_IMAGE.value)]
  prepared = input_pipeline.prepare_images(images)
  start = weights.load_params(_WEIGHTS.value) if _WEIGHTS.value else None
  for name in _SETTINGS.value:
    config = train_config.TrainConfig(batch_size=_BATCH.value, **SETTINGS[name])
    model = train.create_model(config)
    tx, schedule = train.create_optimizer(config)
    mesh = train.make_mesh()
    state = train.create_train_state(config, model, tx, mesh)
    if start is not None:
      params = jax.device_put(start, jax.tree.map(lambda x: x.sharding,
                                                  state.params))
      state = state.replace(params=params, opt_state=jax.jit(tx.init)(params))
    step = train.make_train_step(config, model, tx, schedule, mesh)
    losses, started = [], time.time()
    for k in range(_STEPS.value):
      batch = input_pipeline.make_batch(prepared, config.pipeline_config(), k)
      state, metrics = step(state, train.global_batch(batch, mesh))
      losses.append(float(metrics['loss']))
    bicubic = float(np.mean((batch['inputs'] - batch['targets'])**2))
    print(f'{name}: batch MSE every 3rd step '
          f'{[round(v, 5) for v in losses[::3]]}; mean of last 5 '
          f'{np.mean(losses[-5:]):.5f} (bicubic on the last batch '
          f'{bicubic:.5f}); last grad norm {float(metrics["grad_norm"]):.4g}; '
          f'{time.time() - started:.0f} s', flush=True)
    if _WINDOW.value:
      means = [np.mean(losses[i:i + _WINDOW.value])
               for i in range(0, len(losses), _WINDOW.value)]
      print(f'{name}: mean batch MSE per {_WINDOW.value} steps '
            f'{[round(float(v), 6) for v in means]}', flush=True)
    if _DEAD_BATCHES.value:
      dead = models.dead_channels(model, train.host_params(state.params), [
          input_pipeline.make_batch(prepared, config.pipeline_config(),
                                    10**6 + k)['inputs']
          for k in range(_DEAD_BATCHES.value)])
      print(f'{name}: dead channels per hidden layer {dead}; {sum(dead)} of '
            f'{len(dead) * config.features}', flush=True)


if __name__ == '__main__':
  app.run(main)
