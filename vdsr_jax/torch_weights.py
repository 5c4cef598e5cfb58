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
>= 1.6 (`<name>/data.pkl` and one `<name>/data/<key>` file per storage). A
legacy storage is sized by the element type of its own class, wherever the
pickle names it (a parameter, an integer buffer, anything else), and a legacy
storage view (a slice of another storage) is followed. The object may be a
state_dict, a whole `nn.Module`, or a dict holding either under 'model' or
'state_dict'.

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
# Element types of torch's storage classes (little-endian). Floating ones are
# read as weights; the others (a module's integer buffers, say) are read as
# they are, so that their storages are sized right and their names can be
# reported, but are never accepted as a kernel or bias. bfloat16 is read as
# its 16 bits and widened to float32 exactly (the upper half of a float32).
STORAGE_DTYPES = {
    'FloatStorage': np.dtype('<f4'), 'DoubleStorage': np.dtype('<f8'),
    'HalfStorage': np.dtype('<f2'), 'BFloat16Storage': np.dtype('<u2'),
    'LongStorage': np.dtype('<i8'), 'IntStorage': np.dtype('<i4'),
    'ShortStorage': np.dtype('<i2'), 'CharStorage': np.dtype('i1'),
    'ByteStorage': np.dtype('u1'), 'BoolStorage': np.dtype('?'),
}
FLOAT_STORAGES = ('FloatStorage', 'DoubleStorage', 'HalfStorage',
                  'BFloat16Storage')


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
class StorageRef:
  """A storage as a tensor names it: its key, class and, for a legacy view
  of part of another storage, the view's element range in that storage."""
  key: str
  storage_type: str
  view_start: int = 0
  view_size: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class TensorRef:
  """Where a tensor's elements are: a storage, an offset, shape and strides."""
  storage: StorageRef
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


def read_pickle(stream: io.BytesIO,
                persistent_ids: Optional[List[Any]] = None) -> Any:
  """Interprets one pickle from `stream` symbolically (see module docstring).

  Leaves `stream` just after the pickle's STOP. Raises TorchWeightsError for
  an opcode this reader does not model (none of torch.save's do). Every
  persistent id met is appended to `persistent_ids` when given (all the
  storages the pickle refers to, parameters or not).
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
    elif name in ('BINPERSID', 'PERSID'):
      pid = PersistentId(stack.pop() if name == 'BINPERSID' else arg)
      if persistent_ids is not None:
        persistent_ids.append(pid.value)
      stack.append(pid)
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


def _storage_ref(pid) -> StorageRef:
  """A persistent id ('storage', <class>, key, location, size[, view])."""
  if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == 'storage'
          and isinstance(pid[1], Global)):
    raise TorchWeightsError(f'unexpected tensor storage {pid!r}.')
  view = pid[5] if len(pid) > 5 else None  # legacy: (view_key, start, size)
  if view is None:
    return StorageRef(str(pid[2]), pid[1].name)
  if not (isinstance(view, tuple) and len(view) == 3):
    raise TorchWeightsError(f'unexpected storage view {view!r}.')
  return StorageRef(str(pid[2]), pid[1].name, int(view[1]), int(view[2]))


def _tensor_ref(call: Call) -> TensorRef:
  """A torch._utils._rebuild_tensor(_v2)(storage, offset, size, stride) call."""
  storage, offset, shape, stride = call.args[:4]
  if not isinstance(storage, PersistentId):
    raise TorchWeightsError(f'unexpected tensor storage {storage!r}.')
  return TensorRef(_storage_ref(storage.value), int(offset), tuple(shape),
                   tuple(stride))


def _storage_dtype(storage_type: str) -> np.dtype:
  dtype = STORAGE_DTYPES.get(storage_type)
  if dtype is None:
    raise TorchWeightsError(f'unsupported tensor storage {storage_type}; '
                            f'expected one of {sorted(STORAGE_DTYPES)}.')
  return dtype


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
                                       Dict[str, bytes]]:
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
  pids = []
  tensors = state_dict(read_pickle(stream, pids))
  # Each raw storage is written as its element count, then its bytes: its
  # element size comes from its class, named wherever the pickle refers to
  # it (by a parameter, a buffer or anything else).
  types = {}
  for pid in pids:  # the others are ('module', <class>, file, source)
    if isinstance(pid, tuple) and pid and pid[0] == 'storage':
      ref = _storage_ref(pid)
      types.setdefault(ref.key, ref.storage_type)
  keys = read_pickle(stream)
  storages = {}
  for key in keys:
    key = str(key)
    if key not in types:
      raise TorchWeightsError(f'storage {key} is never referred to, so its '
                              'element size is unknown.')
    itemsize = _storage_dtype(types[key]).itemsize
    header = stream.read(8)
    if len(header) != 8:
      raise TorchWeightsError(f'storage {key} is cut short: truncated file.')
    (count,) = struct.unpack('<q', header)
    raw = stream.read(count * itemsize) if count >= 0 else b''
    if count < 0 or len(raw) != count * itemsize:
      raise TorchWeightsError(f'storage {key} is cut short: truncated file.')
    storages[key] = raw
  return tensors, storages


def _read_zip(path: pathlib.Path) -> Tuple[Dict[str, Optional[TensorRef]],
                                           Dict[str, bytes]]:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if len(pickles) != 1:
      raise TorchWeightsError('zip .pth without exactly one data.pkl.')
    root = pickles[0][:-len('data.pkl')]
    tensors = state_dict(read_pickle(io.BytesIO(archive.read(pickles[0]))))
    storages = {}
    for ref in tensors.values():
      if ref is None or ref.storage.key in storages:
        continue
      key = ref.storage.key
      try:
        storages[key] = archive.read(f'{root}data/{key}')
      except KeyError:
        raise TorchWeightsError(f'storage {key} missing from the '
                                'archive.') from None
  return tensors, storages


def _materialise(ref: TensorRef, raw: bytes) -> np.ndarray:
  """The tensor's elements from its storage's bytes: float32 for a floating
  storage, the storage's own dtype otherwise."""
  dtype = _storage_dtype(ref.storage.storage_type)
  if len(raw) % dtype.itemsize:
    raise TorchWeightsError(f'storage of {len(raw)} bytes is not a whole '
                            f'number of {ref.storage.storage_type} elements.')
  storage = np.frombuffer(raw, dtype)
  start = ref.storage.view_start
  size = (storage.size - start if ref.storage.view_size is None
          else ref.storage.view_size)
  if start < 0 or size < 0 or start + size > storage.size:
    raise TorchWeightsError(f'storage view [{start}, {start + size}) does not '
                            f'fit its storage of {storage.size}.')
  storage = storage[start:start + size]
  extent = ref.offset + 1 + sum((n - 1) * s for n, s in zip(ref.shape,
                                                            ref.stride))
  if (min(ref.shape, default=1) <= 0 or min(ref.stride, default=0) < 0
      or ref.offset < 0 or extent > storage.size):
    raise TorchWeightsError(f'tensor {ref.shape} at offset {ref.offset} does '
                            f'not fit its storage of {storage.size}.')
  view = np.lib.stride_tricks.as_strided(
      storage[ref.offset:], shape=ref.shape,
      strides=[s * dtype.itemsize for s in ref.stride], writeable=False)
  if ref.storage.storage_type == 'BFloat16Storage':
    return (view.astype(np.uint32) << 16).view(np.float32)
  if ref.storage.storage_type in FLOAT_STORAGES:
    return np.array(view, dtype=np.float32)
  return np.array(view)


def read_tensors(path) -> Dict[str, Optional[np.ndarray]]:
  """The named tensors of a .pth (None: declared None).

  Tensors of floating storages come back as float32, others (integer or
  boolean buffers) in their own dtype.
  """
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
    if ref.storage.key not in storages:
      raise TorchWeightsError(f'{path}: storage {ref.storage.key} of {name} '
                              'is not in the file.')
    try:
      out[name] = _materialise(ref, storages[ref.storage.key])
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
    for what, array in (('weight', kernel), ('bias', bias)):
      if array.dtype != np.float32:
        raise TorchWeightsError(f'{path}: {name}.{what} is {array.dtype}, '
                                'not a floating-point tensor.')
    params[f'conv{i}'] = {'kernel': kernel.transpose(2, 3, 1, 0).copy(),
                          'bias': bias.reshape(-1)}
  return params
