"""Reads PyTorch VDSR weights (`.pth`) without unpickling them.

A `.pth` is a pickle, and unpickling runs whatever the file names: weights
from the internet are untrusted code. This module reads the pickle as data
instead. `read_pickle` interprets its opcodes symbolically: a class or
function stays a name (`Global`), a call stays a record (`Call`), a storage
reference stays its id (`PersistentId`); nothing is imported or called. The
tensors are then found in that record by the names of torch's rebuild
functions, and read from the raw storage bytes with numpy.

Containers: torch's legacy format (before 1.6: magic number, protocol,
sys_info, the object, the storage keys, then the raw storages; e.g.
twtygqyy/pytorch-vdsr's `model_epoch_50.pth`) and the zip format of torch
>= 1.6 (`<name>/data.pkl` and one `<name>/data/<key>` file per storage). The
object may be a state_dict, a whole `nn.Module`, or a dict holding either
under 'model' or 'state_dict'.

`load_vdsr` maps the tensor names of the PyTorch port (`input`,
`residual_layer.<i>.conv`, `output`; OIHW kernels, biases optional) onto this
project's `conv<i>` parameters (HWIO kernels; a missing bias is zero).
"""

import dataclasses
import io
import pathlib
import pickletools
import re
import struct
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {'FloatStorage': np.float32, 'DoubleStorage': np.float64,
                  'HalfStorage': np.float16}


class TorchWeightsError(ValueError):
  """A .pth file is unreadable or holds no VDSR of the expected layout."""


@dataclasses.dataclass(frozen=True)
class Global:
  """A class or function named by the pickle (never imported)."""
  module: str
  name: str


@dataclasses.dataclass(eq=False)
class Call:
  """`func(*args)` as recorded by REDUCE / NEWOBJ (never called).

  `state` is what BUILD would set on the result; `items` what SETITEM(S) /
  APPEND(S) would add to it (an OrderedDict's entries, say).
  """
  func: Any
  args: Tuple[Any, ...]
  state: Any = None
  items: List[Any] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class PersistentId:
  """An object the pickle refers to outside itself (a tensor storage)."""
  value: Any


@dataclasses.dataclass(frozen=True)
class TensorRef:
  """Where a tensor's elements are: a storage, an offset, shape and strides."""
  key: str
  dtype: Any
  offset: int
  shape: Tuple[int, ...]
  stride: Tuple[int, ...]


_CONSTANTS = {'NONE': None, 'NEWTRUE': True, 'NEWFALSE': False,
              'EMPTY_TUPLE': ()}
_VALUE_OPS = {'INT', 'BININT', 'BININT1', 'BININT2', 'LONG', 'LONG1', 'LONG4',
              'FLOAT', 'BINFLOAT', 'STRING', 'BINSTRING', 'SHORT_BINSTRING',
              'UNICODE', 'BINUNICODE', 'SHORT_BINUNICODE', 'BINUNICODE8',
              'BINBYTES', 'SHORT_BINBYTES', 'BINBYTES8'}
_IGNORED = {'PROTO', 'FRAME'}


def read_pickle(stream: io.BytesIO) -> Any:
  """Interprets one pickle from `stream` symbolically (see module docstring).

  Leaves `stream` just after the pickle's STOP. Raises TorchWeightsError for
  an opcode this reader does not model (none of torch.save's do).
  """
  stack: List[Any] = []
  marks: List[int] = []
  memo: Dict[int, Any] = {}

  def pop_to_mark():
    start = marks.pop()
    items = stack[start:]
    del stack[start:]
    return items

  def add_items(target, items):
    if isinstance(target, list):
      target.extend(items)
    elif isinstance(target, Call):
      target.items.extend(items)
    else:
      raise TorchWeightsError(
          f'pickle appends to a {type(target).__name__}.')

  def set_items(target, pairs):
    if isinstance(target, dict):
      for k, v in pairs:
        target[k] = v
    elif isinstance(target, Call):
      target.items.extend(pairs)
    else:
      raise TorchWeightsError(
          f'pickle sets items on a {type(target).__name__}.')

  for op, arg, _ in pickletools.genops(stream):
    name = op.name
    if name in _IGNORED:
      continue
    if name == 'STOP':
      if len(stack) != 1:
        raise TorchWeightsError('malformed pickle (stack at STOP).')
      return stack[0]
    if name in _CONSTANTS:
      stack.append(_CONSTANTS[name])
    elif name in _VALUE_OPS:
      stack.append(arg)
    elif name == 'MARK':
      marks.append(len(stack))
    elif name == 'EMPTY_DICT':
      stack.append({})
    elif name == 'EMPTY_LIST':
      stack.append([])
    elif name == 'TUPLE':
      stack.append(tuple(pop_to_mark()))
    elif name in ('TUPLE1', 'TUPLE2', 'TUPLE3'):
      n = int(name[-1])
      items = tuple(stack[-n:])
      del stack[-n:]
      stack.append(items)
    elif name == 'LIST':
      stack.append(pop_to_mark())
    elif name == 'DICT':
      items = pop_to_mark()
      stack.append(dict(zip(items[::2], items[1::2])))
    elif name == 'APPEND':
      value = stack.pop()
      add_items(stack[-1], [value])
    elif name == 'APPENDS':
      items = pop_to_mark()
      add_items(stack[-1], items)
    elif name == 'SETITEM':
      value = stack.pop()
      key = stack.pop()
      set_items(stack[-1], [(key, value)])
    elif name == 'SETITEMS':
      items = pop_to_mark()
      set_items(stack[-1], list(zip(items[::2], items[1::2])))
    elif name == 'GLOBAL':
      module, _, attr = arg.partition(' ')
      stack.append(Global(module, attr))
    elif name == 'STACK_GLOBAL':
      attr = stack.pop()
      stack.append(Global(stack.pop(), attr))
    elif name in ('REDUCE', 'NEWOBJ'):  # func(*args) / cls.__new__(cls, *args)
      args = stack.pop()
      stack.append(Call(stack.pop(), tuple(args)))
    elif name == 'BUILD':
      state = stack.pop()
      if not isinstance(stack[-1], Call):
        raise TorchWeightsError(
            f'pickle sets state on a {type(stack[-1]).__name__}.')
      stack[-1].state = state
    elif name == 'BINPERSID':
      stack.append(PersistentId(stack.pop()))
    elif name == 'PERSID':
      stack.append(PersistentId(arg))
    elif name in ('PUT', 'BINPUT', 'LONG_BINPUT'):
      memo[arg] = stack[-1]
    elif name == 'MEMOIZE':
      memo[len(memo)] = stack[-1]
    elif name in ('GET', 'BINGET', 'LONG_BINGET'):
      stack.append(memo[arg])
    elif name == 'POP':
      stack.pop()
    elif name == 'POP_MARK':
      pop_to_mark()
    elif name == 'DUP':
      stack.append(stack[-1])
    else:
      raise TorchWeightsError(f'unsupported pickle opcode {name}.')
  raise TorchWeightsError('pickle ends without STOP.')


def _is(obj, module: str, *names: str) -> bool:
  return (isinstance(obj, Call) and isinstance(obj.func, Global)
          and obj.func.module == module and obj.func.name in names)


def _tensor_ref(call: Call) -> TensorRef:
  """A torch._utils._rebuild_tensor(_v2)(storage, offset, size, stride) call."""
  storage, offset, shape, stride = call.args[:4]
  pid = storage.value if isinstance(storage, PersistentId) else None
  if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == 'storage'
          and isinstance(pid[1], Global)):
    raise TorchWeightsError(f'unexpected tensor storage {storage!r}.')
  dtype = STORAGE_DTYPES.get(pid[1].name)
  if dtype is None:
    raise TorchWeightsError(f'unsupported tensor storage {pid[1].name}; '
                            f'expected one of {sorted(STORAGE_DTYPES)}.')
  return TensorRef(str(pid[2]), dtype, int(offset), tuple(shape),
                   tuple(stride))


def _as_tensor(obj) -> Optional[TensorRef]:
  """The TensorRef of a tensor or Parameter record, else None."""
  if _is(obj, 'torch._utils', '_rebuild_tensor', '_rebuild_tensor_v2'):
    return _tensor_ref(obj)
  if (_is(obj, 'torch._utils', '_rebuild_parameter',
          '_rebuild_parameter_with_state')
      or _is(obj, 'torch.nn.parameter', 'Parameter')):
    return _as_tensor(obj.args[0]) if obj.args else None
  return None


def _entries(obj) -> Optional[List[Tuple[Any, Any]]]:
  """The (key, value) entries of a dict or an OrderedDict record."""
  if isinstance(obj, dict):
    return list(obj.items())
  if _is(obj, 'collections', 'OrderedDict'):
    entries = [tuple(pair) for pair in (obj.args[0] if obj.args else [])]
    return entries + [tuple(pair) for pair in obj.items]
  return None


def state_dict(obj, prefix: str = '') -> Dict[str, Optional[TensorRef]]:
  """Flattens a state_dict, an nn.Module record or a checkpoint dict.

  Returns {'name.weight': TensorRef, 'name.bias': None, ...} (None for a
  parameter a module declares as None, such as bias=False).
  """
  if (isinstance(obj, Call) and isinstance(obj.state, dict)
      and '_parameters' in obj.state):  # an nn.Module
    out = {}
    for name, value in _entries(obj.state['_parameters']) or []:
      out[prefix + name] = None if value is None else _as_tensor(value)
    for name, module in _entries(obj.state.get('_modules', {})) or []:
      if module is not None:
        out.update(state_dict(module, f'{prefix}{name}.'))
    return out
  entries = _entries(obj)
  if entries is None:
    raise TorchWeightsError(
        f'expected a state_dict, an nn.Module or a dict holding one; got '
        f'{type(obj).__name__}.')
  keys = {k for k, _ in entries}
  for wrapper in ('state_dict', 'model'):
    if wrapper in keys and not prefix:
      return state_dict(dict(entries)[wrapper])
  out = {}
  for name, value in entries:
    ref = _as_tensor(value)
    if ref is not None:
      out[prefix + str(name)] = ref
  return out


def _read_legacy(data: bytes) -> Tuple[Dict[str, Optional[TensorRef]],
                                       Dict[str, np.ndarray]]:
  stream = io.BytesIO(data)
  try:
    magic = read_pickle(stream)
    protocol = read_pickle(stream)
    sys_info = read_pickle(stream)
  except (TorchWeightsError, ValueError, EOFError) as e:
    raise TorchWeightsError(f'not a torch.save file ({e}).') from None
  if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL:
    raise TorchWeightsError('not a torch.save file (wrong magic number or '
                            'protocol).')
  if not (isinstance(sys_info, dict) and sys_info.get('little_endian')):
    raise TorchWeightsError('only little-endian torch files are supported.')
  tensors = state_dict(read_pickle(stream))
  keys = read_pickle(stream)
  storages = {}
  for key in keys:
    header = stream.read(8)
    if len(header) != 8:
      raise TorchWeightsError(f'storage {key} is cut short: truncated file.')
    (count,) = struct.unpack('<q', header)
    dtype = next((t.dtype for t in tensors.values()
                  if t is not None and t.key == key), np.float32)
    raw = stream.read(count * np.dtype(dtype).itemsize)
    if len(raw) != count * np.dtype(dtype).itemsize:
      raise TorchWeightsError(f'storage {key} is cut short: truncated file.')
    storages[str(key)] = np.frombuffer(raw, np.dtype(dtype).newbyteorder('<'))
  return tensors, storages


def _read_zip(path: pathlib.Path) -> Tuple[Dict[str, Optional[TensorRef]],
                                           Dict[str, np.ndarray]]:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if len(pickles) != 1:
      raise TorchWeightsError('zip .pth without exactly one data.pkl.')
    root = pickles[0][:-len('data.pkl')]
    tensors = state_dict(read_pickle(io.BytesIO(archive.read(pickles[0]))))
    storages = {}
    for ref in tensors.values():
      if ref is None or ref.key in storages:
        continue
      try:
        raw = archive.read(f'{root}data/{ref.key}')
      except KeyError:
        raise TorchWeightsError(f'storage {ref.key} missing from the '
                                'archive.') from None
      storages[ref.key] = np.frombuffer(raw,
                                        np.dtype(ref.dtype).newbyteorder('<'))
  return tensors, storages


def _materialise(ref: TensorRef, storage: np.ndarray) -> np.ndarray:
  itemsize = storage.dtype.itemsize
  extent = ref.offset + 1 + sum((n - 1) * s for n, s in zip(ref.shape,
                                                            ref.stride))
  if min(ref.shape, default=1) == 0 or extent > storage.size:
    raise TorchWeightsError(f'tensor {ref.shape} at offset {ref.offset} does '
                            f'not fit its storage of {storage.size}.')
  view = np.lib.stride_tricks.as_strided(
      storage[ref.offset:], shape=ref.shape,
      strides=[s * itemsize for s in ref.stride], writeable=False)
  return np.array(view, dtype=np.float32)


def read_tensors(path) -> Dict[str, Optional[np.ndarray]]:
  """The named tensors of a .pth as float32 arrays (None: declared None)."""
  path = pathlib.Path(path)
  try:
    if zipfile.is_zipfile(path):
      tensors, storages = _read_zip(path)
    else:
      tensors, storages = _read_legacy(path.read_bytes())
  except FileNotFoundError:
    raise TorchWeightsError(f'No such weights file: {path}') from None
  except TorchWeightsError as e:
    raise TorchWeightsError(f'{path}: {e}') from None
  except (zipfile.BadZipFile, ValueError, EOFError, KeyError, IndexError,
          TypeError, AttributeError, struct.error) as e:
    raise TorchWeightsError(f'{path}: unreadable .pth ({e!r}).') from None
  out = {}
  for name, ref in tensors.items():
    if ref is None:
      out[name] = None
      continue
    if ref.key not in storages:
      raise TorchWeightsError(f'{path}: storage {ref.key} of {name} is not '
                              'in the file.')
    try:
      out[name] = _materialise(ref, storages[ref.key])
    except TorchWeightsError as e:
      raise TorchWeightsError(f'{path}: {name}: {e}') from None
  return out


_MIDDLE = re.compile(r'residual_layer\.(\d+)\.conv\.(weight|bias)$')


def load_vdsr(path) -> Dict[str, Dict[str, np.ndarray]]:
  """The PyTorch port's VDSR as this project's params (see module docstring)."""
  tensors = read_tensors(path)
  tensors = {k[len('module.'):] if k.startswith('module.') else k: v
             for k, v in tensors.items()}  # nn.DataParallel's prefix
  middle = sorted({int(m.group(1)) for m in map(_MIDDLE.match, tensors) if m})
  if 'input.weight' not in tensors or 'output.weight' not in tensors:
    raise TorchWeightsError(
        f'{path}: expected the PyTorch port\'s names input.weight, '
        f'residual_layer.<i>.conv.weight, output.weight; found '
        f'{sorted(tensors)[:8]}.')
  if middle != list(range(len(middle))):
    raise TorchWeightsError(f'{path}: residual_layer indices {middle} are not '
                            '0..n-1.')
  names = (['input'] + [f'residual_layer.{i}.conv' for i in middle]
           + ['output'])
  params = {}
  for i, name in enumerate(names):
    kernel = tensors[f'{name}.weight']
    if kernel is None or kernel.ndim != 4:
      raise TorchWeightsError(f'{path}: {name}.weight is not a 4-D kernel.')
    bias = tensors.get(f'{name}.bias')
    if bias is None:
      bias = np.zeros(kernel.shape[0], np.float32)
    params[f'conv{i}'] = {'kernel': kernel.transpose(2, 3, 1, 0).copy(),
                          'bias': bias.reshape(-1)}
  return params
