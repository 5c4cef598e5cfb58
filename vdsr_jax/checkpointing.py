"""Training checkpoints: orbax `CheckpointManager` under `workdir/checkpoints`.

A checkpoint at step N holds two items:
  * `state`: the train state as a dict {step, params, opt_state, rng} of
    arrays (orbax StandardSave; restored onto the current mesh's shardings);
  * `meta`: JSON with the input pipeline's position (`next_step`, the index
    of the next batch) and the architecture (depth, features, residual), so a
    resume with another architecture fails with a clear message.

Saving is synchronous: the state is small (about 8 MB for the paper's model),
and the train step donates its input buffers, which must not be read by a
background writer after the next step starts.
"""

import contextlib
import logging
import pathlib
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from vdsr_jax import weights as weights_lib

CHECKPOINT_SUBDIR = 'checkpoints'


def checkpoint_dir(workdir) -> pathlib.Path:
  """Where the checkpoints of a training workdir live."""
  return pathlib.Path(workdir) / CHECKPOINT_SUBDIR


def create_manager(workdir, keep: int = 3) -> ocp.CheckpointManager:
  """A manager keeping the last `keep` checkpoints of `workdir`."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(
      checkpoint_dir(workdir).absolute(), options=options,
      item_names=('state', 'meta'))


def save(manager: ocp.CheckpointManager, state: Dict[str, Any],
         meta: Dict[str, Any]) -> int:
  """Saves `state` (a dict with an integer 'step') and JSON `meta`."""
  step = int(jax.device_get(state['step']))
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
               force=True)
  manager.wait_until_finished()
  return step


def restore_latest(manager: ocp.CheckpointManager, target: Dict[str, Any]
                   ) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
  """Restores the newest checkpoint onto the structure/shardings of `target`.

  Args:
    manager: from `create_manager`.
    target: a state dict of jax.Arrays (or ShapeDtypeStructs with shardings)
      of the same structure as the saved one.

  Returns:
    (state, meta), or None when there is no checkpoint.
  """
  step = manager.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  return restored.state, dict(restored.meta)


def read_meta(manager: ocp.CheckpointManager) -> Optional[Dict[str, Any]]:
  """The JSON `meta` of the newest checkpoint, or None without checkpoints."""
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))
  return dict(restored.meta)


@contextlib.contextmanager
def _quiet_absl():
  """Hides orbax's warning about the item-level metadata file it looks for."""
  logger = logging.getLogger('absl')
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _step_dirs(directory: pathlib.Path):
  """Finished step directories (integer names holding a `state` item)."""
  return sorted((int(p.name), p) for p in directory.iterdir()
                if p.name.isdigit() and (p / 'state').is_dir())


def find_step_dir(path) -> pathlib.Path:
  """Resolves a step dir, a checkpoints dir or a workdir to a step dir.

  Raises:
    weights.WeightsError: no checkpoint is there.
  """
  # orbax needs absolute paths: a relative one reads back no metadata.
  path = pathlib.Path(path).expanduser().absolute()
  if not path.is_dir():
    raise weights_lib.WeightsError(f'No such checkpoint directory: {path}')
  if (path / 'state').is_dir():
    return path
  directory = path
  if (path / CHECKPOINT_SUBDIR).is_dir():
    directory = path / CHECKPOINT_SUBDIR
  steps = _step_dirs(directory)
  if not steps:
    raise weights_lib.WeightsError(
        f'{path} holds no orbax training checkpoint: expected a step '
        f'directory with a "state" item, or a workdir/{CHECKPOINT_SUBDIR} '
        'folder of them (written by experiments/train.py).')
  return steps[-1][1]


def restore_params(path) -> Dict[str, Dict[str, np.ndarray]]:
  """The VDSR params (numpy) of a checkpoint step dir or a workdir's latest.

  Needs no model definition and no devices beyond the host: every array is
  read back as numpy.
  """
  step_dir = find_step_dir(path)
  checkpointer = ocp.PyTreeCheckpointer()
  with _quiet_absl():
    tree = checkpointer.metadata(step_dir / 'state').item_metadata.tree
  if 'params' not in tree:
    raise weights_lib.WeightsError(
        f'{step_dir}: the checkpoint has no "params" entry (found '
        f'{sorted(tree)}).')
  params_meta = tree['params']
  restore_args = jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), params_meta)
  with _quiet_absl():
    restored = checkpointer.restore(
        step_dir / 'state', args=ocp.args.PyTreeRestore(
            item={'params': params_meta},
            restore_args={'params': restore_args}, partial_restore=True))
  return jax.tree.map(np.asarray, restored['params'])
