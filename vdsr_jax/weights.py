"""Loading and saving VDSR parameters.

Formats:
  * `.mat`: the authors' MatConvNet release (`VDSR_Official.mat`), a struct
    `model` with cell arrays `weight` (HWIO kernels) and `bias`.
  * `.npz`: this project's single-file export: one array per
    `conv{i}/kernel|bias`, plus a `__sha256__` entry covering the arrays so a
    damaged file is detected on load.
  * `.pth` / `.pt`: a PyTorch port's weights (twtygqyy/pytorch-vdsr's
    layout), read as data without unpickling (`torch_weights.py`).
  * a directory: an orbax checkpoint written by `experiments/train.py` (its
    `params`), or a workdir holding such checkpoints (the latest is used).
"""

import hashlib
import pathlib
from typing import Any, Dict, Optional, Sequence

import numpy as np

from vdsr_jax import atomic

Params = Dict[str, Dict[str, Any]]

PRETRAINED_PATH = pathlib.Path(__file__).parent / 'pretrained' / 'vdsr_291.npz'


class WeightsError(ValueError):
  """A weights file is missing, unreadable or does not fit VDSR."""


def check_params(params: Any, *, expect_depth: Optional[int] = None) -> Params:
  """Checks that `params` is a VDSR parameter tree; returns the inner dict.

  Accepts either the `params` collection itself or a variables dict
  {'params': ...}. Raises WeightsError naming what does not fit.
  """
  if isinstance(params, dict) and set(params) == {'params'}:
    params = params['params']
  if not hasattr(params, 'keys'):
    raise WeightsError('VDSR params must be a dict {"conv0": {"kernel": ..., '
                       f'"bias": ...}}, ...}}; got {type(params).__name__}.')
  depth = len(params)
  if depth < 2 or set(params) != {f'conv{i}' for i in range(depth)}:
    raise WeightsError('VDSR params must have layers conv0..conv{depth-1}; '
                       f'got keys {sorted(params)[:6]}...')
  if expect_depth is not None and depth != expect_depth:
    raise WeightsError(f'Expected {expect_depth} layers, got {depth}.')
  features = None
  for i in range(depth):
    layer = params[f'conv{i}']
    if not hasattr(layer, 'keys') or set(layer) != {'kernel', 'bias'}:
      raise WeightsError(f'conv{i} must hold exactly "kernel" and "bias".')
    k, b = np.shape(layer['kernel']), np.shape(layer['bias'])
    if i == 0:
      features = k[-1] if len(k) == 4 else None
    cin = 1 if i == 0 else features
    cout = 1 if i == depth - 1 else features
    if k != (3, 3, cin, cout) or b != (cout,):
      raise WeightsError(
          f'conv{i}: expected kernel (3, 3, {cin}, {cout}) and bias '
          f'({cout},), got kernel {k} and bias {b}.')
  return params


def average_params(params_list: Sequence[Any],
                   coefficients: Optional[Sequence[float]] = None) -> Params:
  """The element-wise weighted mean of VDSR params of one architecture.

  Checkpoint averaging (Polyak; Izmailov et al.'s SWA): VDSR has no batch
  statistics, so the mean of checkpoints is a model as it stands.
  `coefficients` (default: equal) must be non-negative with a positive sum;
  they are normalised to sum to 1. Accumulates in float64, returns float32.
  Raises WeightsError if the trees' depths or shapes differ.
  """
  trees = [check_params(p) for p in params_list]
  if not trees:
    raise WeightsError('Nothing to average: no params given.')
  if coefficients is None:
    coefficients = [1.0] * len(trees)
  c = np.asarray(coefficients, np.float64)
  if c.shape != (len(trees),):
    raise WeightsError(f'{len(trees)} params but {c.size} coefficients.')
  if not np.all(np.isfinite(c)) or np.any(c < 0) or c.sum() <= 0:
    raise WeightsError('Averaging coefficients must be finite, non-negative '
                       f'and not all zero; got {list(coefficients)}.')
  c = c / c.sum()
  first = trees[0]
  for n, tree in enumerate(trees[1:], start=1):
    if len(tree) != len(first):
      raise WeightsError(f'Cannot average: params 0 has {len(first)} layers, '
                         f'params {n} has {len(tree)}.')
    for layer in first:
      for name in ('kernel', 'bias'):
        a, b = np.shape(first[layer][name]), np.shape(tree[layer][name])
        if a != b:
          raise WeightsError(f'Cannot average: params 0 and {n} differ at '
                             f'{layer}/{name}, {a} vs {b}.')
  return {layer: {name: sum(w * np.asarray(t[layer][name], np.float64)
                            for w, t in zip(c, trees)).astype(np.float32)
                  for name in ('kernel', 'bias')}
          for layer in first}


def load_matconvnet(path) -> Params:
  """Reads the authors' MatConvNet `.mat` (e.g. VDSR_Official.mat)."""
  from scipy import io as sio  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  try:
    mat = sio.loadmat(str(path))
  except FileNotFoundError:
    raise WeightsError(f'No such weights file: {path}') from None
  except Exception as e:  # scipy raises several types for bad files.
    raise WeightsError(f'{path} is not a readable MATLAB v5/v7 .mat file '
                       f'({e}).') from None
  if 'model' not in mat:
    raise WeightsError(f'{path}: expected a variable "model" (a struct with '
                       f'fields weight and bias); found {sorted(k for k in mat if not k.startswith("__"))}.')
  model = mat['model']
  names = model.dtype.names or ()
  if 'weight' not in names or 'bias' not in names:
    raise WeightsError(f'{path}: "model" must have fields weight and bias; '
                       f'it has {names}.')
  weights = model[0, 0]['weight'].ravel()
  biases = model[0, 0]['bias'].ravel()
  if len(weights) != len(biases):
    raise WeightsError(f'{path}: {len(weights)} weights but {len(biases)} '
                       'biases.')
  params = {}
  for i, (w, b) in enumerate(zip(weights, biases)):
    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim == 3:  # MATLAB drops the trailing singleton of the last layer.
      w = w[..., None]
    params[f'conv{i}'] = {'kernel': w,
                          'bias': np.ascontiguousarray(b, np.float32).ravel()}
  try:
    return check_params(params)
  except WeightsError as e:
    raise WeightsError(f'{path}: {e}') from None


def _digest(arrays: Dict[str, np.ndarray]) -> str:
  h = hashlib.sha256()
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name])
    h.update(name.encode())
    h.update(str(a.dtype).encode() + str(a.shape).encode())
    h.update(a.tobytes())
  return h.hexdigest()


def save_npz(params: Any, path) -> None:
  """Writes params as a checksummed `.npz`, atomically (temp file + rename)."""
  params = check_params(params)
  arrays = {f'{layer}/{name}': np.asarray(v, np.float32)
            for layer, d in params.items() for name, v in d.items()}
  arrays['__sha256__'] = np.array(_digest(arrays))
  with atomic.write(path) as f:
    np.savez(f, **arrays)


def load_npz(path) -> Params:
  """Reads a `.npz` written by `save_npz`, verifying its checksum."""
  path = pathlib.Path(path)
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except FileNotFoundError:
    raise WeightsError(f'No such weights file: {path}') from None
  except Exception as e:
    raise WeightsError(f'{path} is not a readable .npz file ({e}).') from None
  digest = arrays.pop('__sha256__', None)
  if digest is None:
    raise WeightsError(f'{path}: no __sha256__ entry; not a vdsr_jax export.')
  if str(digest) != _digest(arrays):
    raise WeightsError(f'{path}: checksum mismatch; the file is damaged.')
  params: Params = {}
  for key, value in arrays.items():
    layer, _, name = key.partition('/')
    params.setdefault(layer, {})[name] = value
  try:
    return check_params(params)
  except WeightsError as e:
    raise WeightsError(f'{path}: {e}') from None


def load_orbax(path) -> Params:
  """Reads `params` from an orbax checkpoint or a training workdir."""
  from vdsr_jax import checkpointing  # pylint: disable=g-import-not-at-top
  try:
    params = checkpointing.restore_params(path)
  except WeightsError:
    raise
  except Exception as e:
    raise WeightsError(f'{path}: could not read an orbax checkpoint '
                       f'({type(e).__name__}: {e}).') from None
  return check_params({k: {n: np.asarray(v) for n, v in d.items()}
                       for k, d in params.items()})


def load_torch(path) -> Params:
  """Reads a PyTorch port's `.pth` without unpickling it (torch_weights.py)."""
  from vdsr_jax import torch_weights  # pylint: disable=g-import-not-at-top
  try:
    params = torch_weights.load_vdsr(path)
  except torch_weights.TorchWeightsError as e:
    raise WeightsError(str(e)) from None
  try:
    return check_params(params)
  except WeightsError as e:
    raise WeightsError(f'{path}: {e}') from None


def load_params(path) -> Params:
  """Loads VDSR params from a `.mat`, `.npz`, `.pth` or orbax checkpoint."""
  path = pathlib.Path(path).expanduser()
  if not path.exists():
    raise WeightsError(f'No such weights file or directory: {path}')
  if path.is_dir():
    return load_orbax(path)
  suffix = path.suffix.lower()
  if suffix == '.mat':
    return load_matconvnet(path)
  if suffix == '.npz':
    return load_npz(path)
  if suffix in ('.pth', '.pt'):
    return load_torch(path)
  raise WeightsError(f'{path}: unknown weights format {suffix!r}; expected '
                     'a .mat (authors\' MatConvNet), a .npz (vdsr_jax export), '
                     'a .pth (PyTorch port) or an orbax checkpoint directory.')


def load_pretrained() -> Params:
  """Returns the VDSR weights shipped inside the package (checksum verified).

  vdsr_jax's own multi-scale model (x2/x3/x4), trained on the 291 images
  with the PyTorch port's recipe on rotated/flipped patches
  (`experiments/configs/vdsr_pytorch_port_aug_100k.flags`);
  `pretrained/vdsr_291.json` names its flagfile, run, commits and scores
  (see the README's results table).
  """
  if not PRETRAINED_PATH.exists():
    raise WeightsError(
        'No pretrained vdsr_jax weights are shipped in this version yet '
        f'(expected {PRETRAINED_PATH}). Pass weights explicitly, e.g. the '
        "authors' VDSR_Official.mat via load_params(path).")
  return load_npz(PRETRAINED_PATH)
