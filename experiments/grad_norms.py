r"""Per-layer gradient norms of the training objective on one real batch.

Shows which parameters make up the global gradient norm, i.e. what a
global-norm clip actually rescales:

  python experiments/grad_norms.py --flagfile=experiments/configs/vdsr_paper.flags \
      --weights=experiments/results/vdsr_291_cpu_global_norm/checkpoints/2410

Prints, for every layer, the norm of the kernel and bias gradients and their
share of the squared global norm; with --dead_batches the channels that
never pass their ReLU; with element-wise clipping
(--clip_mode=value) the share of gradient elements it would cut at each
learning rate of the schedule; plus the batch MSE of the network and of
its bicubic input (over --mse_batches batches if given, to compare weights
on the training distribution). Without --weights the run's initialisation (--seed) is
used. The batch is batch number --step of the run's own pipeline.
"""

import pathlib
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import train as cli  # pylint: disable=g-import-not-at-top  # experiments/train.py
from vdsr_jax import input_pipeline
from vdsr_jax import models
from vdsr_jax import train
from vdsr_jax import train_config
from vdsr_jax import weights

_WEIGHTS = flags.DEFINE_string(
    'weights', None, 'Params to probe (.npz, .mat, .pth or orbax checkpoint); '
    'default: the initialisation of --seed.')
_STEP = flags.DEFINE_integer('step', 0, 'Which batch of the pipeline.')
_DEAD_BATCHES = flags.DEFINE_integer(
    'dead_batches', 0, 'Also count, per hidden layer, the channels whose '
    'ReLU output is 0 on all of this many batches from --step on (0: no).')
_MSE_BATCHES = flags.DEFINE_integer(
    'mse_batches', 0, 'Also report the network and bicubic MSE averaged over '
    'this many batches from --step on (0: none).')
# The training flags are reused; this tool writes nothing, so no --workdir.
flags.FLAGS.set_default('workdir', '')


def gradient_report(config: train_config.TrainConfig, params, batch) -> str:
  """A table of per-parameter gradient norms of `config`'s objective."""
  model = train.create_model(config)
  scale = train.loss_scale(config)
  x, y = jnp.asarray(batch['inputs']), jnp.asarray(batch['targets'])

  def objective(p):
    out = model.apply({'params': p}, x)
    return jnp.mean(jnp.square(out - y)) * scale, out

  grads, out = jax.grad(objective, has_aux=True)(params)
  norms = {(layer, name): float(jnp.linalg.norm(g))
           for layer, leaves in grads.items() for name, g in leaves.items()}
  total = sum(v * v for v in norms.values())
  layers = sorted(grads, key=lambda k: int(''.join(filter(str.isdigit, k))))
  lines = [f'{"layer":8s} {"kernel":>10s} {"bias":>10s} {"share":>7s}']
  for layer in layers:
    k, b = norms.get((layer, 'kernel'), 0.0), norms.get((layer, 'bias'), 0.0)
    lines.append(f'{layer:8s} {k:10.4g} {b:10.4g} '
                 f'{(k * k + b * b) / total:7.1%}')
  if config.clip_mode == 'value':
    lines.append(clipped_share_line(config, grads))
  lines.append(f'global norm {np.sqrt(total):.4g}; batch MSE: network '
               f'{float(jnp.mean((out - y) ** 2)):.5g}, bicubic input '
               f'{float(jnp.mean((x - y) ** 2)):.5g}; mean residual error '
               f'{float(jnp.mean(out - y)):+.4g}')
  return '\n'.join(lines)


def clipped_share_line(config: train_config.TrainConfig, grads) -> str:
  """Which share of gradient elements element-wise clipping would cut at
  each learning rate of the run's schedule (threshold theta / lr)."""
  magnitudes = np.concatenate([np.abs(np.asarray(g)).ravel()
                               for g in jax.tree.leaves(grads)])
  rates = [config.learning_rate * config.decay_factor ** k
           for k in range(len(config.boundaries) + 1)]
  shares = ', '.join(
      f'lr {lr:g}: {np.mean(magnitudes > config.clip_theta / lr):.1%}'
      for lr in rates)
  return (f'elements beyond theta / lr (theta {config.clip_theta:g}; median '
          f'|g| {np.median(magnitudes):.3g}): {shares}')


def main(argv):
  del argv
  config = cli.config_from_flags()
  model = train.create_model(config)
  if _WEIGHTS.value:
    params = weights.load_params(_WEIGHTS.value)
  else:  # exactly the run's initial params
    tx, _ = train.create_optimizer(config)
    params = train.create_train_state(config, model, tx).params
  images = train.load_train_images(config)
  prepared = input_pipeline.prepare_images(images, config.downscale_factors)
  batch = input_pipeline.make_batch(prepared, config.pipeline_config(),
                                    _STEP.value)
  print(gradient_report(config, params, batch))
  if _DEAD_BATCHES.value:
    dead = models.dead_channels(model, params, [
        input_pipeline.make_batch(prepared, config.pipeline_config(),
                                  k)['inputs']
        for k in range(_STEP.value, _STEP.value + _DEAD_BATCHES.value)])
    print(f'dead channels per hidden layer over {_DEAD_BATCHES.value} '
          f'batches: {dead}; {sum(dead)} of {len(dead) * config.features}')
  if _MSE_BATCHES.value:
    forward = jax.jit(lambda p, x: model.apply({'params': p}, x))
    net, bic = [], []
    for k in range(_STEP.value, _STEP.value + _MSE_BATCHES.value):
      b = input_pipeline.make_batch(prepared, config.pipeline_config(), k)
      out = np.asarray(forward(params, b['inputs']))
      net.append(np.mean((out - b['targets']) ** 2))
      bic.append(np.mean((b['inputs'] - b['targets']) ** 2))
    print(f'mean batch MSE over {len(net)} batches: network '
          f'{np.mean(net):.5g}, bicubic input {np.mean(bic):.5g} '
          f'(network / bicubic {np.mean(net) / np.mean(bic):.4f})')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
