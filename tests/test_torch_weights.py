"""Tests for vdsr_jax.torch_weights: .pth files read as data, never executed."""

import io
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from vdsr_jax import torch_weights
from vdsr_jax import weights

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


# A minimal pickle writer (protocol 2 opcodes), to build torch-style files
# here without torch.
def _str(s):
  b = s.encode()
  return b'X' + struct.pack('<I', len(b)) + b


def _int(n):
  return b'J' + struct.pack('<i', n)


def _global(module, name):
  return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def _tuple_of_ints(values):
  return b'(' + b''.join(_int(v) for v in values) + b't'


def _ordered_dict():
  return _global('collections', 'OrderedDict') + b')R'


def _tensor(key, numel, offset, shape, stride, storage_type='FloatStorage',
            legacy_view=False):
  """torch._utils._rebuild_tensor_v2(storage, offset, shape, stride, ...).

  `legacy_view`: False for a zip file's 5-field storage id; None or
  (view_key, start, size) for a legacy file's 6th field.
  """
  view = b''
  if legacy_view is None:
    view = b'N'
  elif legacy_view:
    view_key, start, size = legacy_view
    view = b'(' + _str(view_key) + _int(start) + _int(size) + b't'
  storage = (b'(' + _str('storage') + _global('torch', storage_type)
             + _str(key) + _str('cpu') + _int(numel) + view + b'tQ')
  return (_global('torch._utils', '_rebuild_tensor_v2') + b'(' + storage
          + _int(offset) + _tuple_of_ints(shape) + _tuple_of_ints(stride)
          + b'\x89' + _ordered_dict() + b'tR')


def _state_dict_pickle(entries):
  """An OrderedDict {name: tensor record} pickle."""
  body = b''.join(_str(name) + record for name, record in entries)
  return b'\x80\x02' + _ordered_dict() + b'(' + body + b'u.'


def _raw(array):
  """A storage's bytes: float32 unless the array has another dtype."""
  array = np.asarray(array)
  if array.dtype == np.float64:
    array = array.astype('<f4')
  return array.tobytes()


def _write_zip(path, pickle_bytes, storages):
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', pickle_bytes)
    for key, array in storages.items():
      archive.writestr(f'archive/data/{key}', _raw(array))


def _write_legacy(path, pickle_bytes, storages):
  """torch's legacy container: magic, protocol, sys_info, the object, the
  storage keys, then each storage as int64 element count + raw bytes."""
  header = (pickle.dumps(torch_weights.LEGACY_MAGIC, 2)
            + pickle.dumps(torch_weights.LEGACY_PROTOCOL, 2)
            + pickle.dumps({'protocol_version': 1001, 'little_endian': True,
                            'type_sizes': {'int': 4, 'long': 4}}, 2))
  body = pickle_bytes + pickle.dumps(list(storages), 2)
  for array in storages.values():
    body += struct.pack('<q', np.asarray(array).size) + _raw(array)
  path.write_bytes(header + body)


def _tiny_port(tmp_path, features=4):
  """A depth-3 port-layout .pth: two storages, one transposed view, a bias."""
  rng = np.random.default_rng(0)
  first = rng.normal(size=(features, 1, 3, 3)).astype(np.float32)
  middle = rng.normal(size=(features, features, 3, 3)).astype(np.float32)
  bias = rng.normal(size=(features,)).astype(np.float32)
  last = rng.normal(size=(1, features, 3, 3)).astype(np.float32)
  # Storage '0' holds first, then bias (at an offset); storage '1' holds the
  # middle kernel transposed in memory (a non-contiguous view, as after
  # .t()), then the last kernel.
  store0 = np.concatenate([first.ravel(), bias])
  middle_t = np.ascontiguousarray(middle.transpose(1, 0, 2, 3))
  store1 = np.concatenate([middle_t.ravel(), last.ravel()])
  f = features
  entries = [
      ('input.weight', _tensor('0', store0.size, 0, first.shape,
                               (9, 9, 3, 1))),
      ('residual_layer.0.conv.weight',
       _tensor('1', store1.size, 0, middle.shape, (9, f * 9, 3, 1))),
      ('residual_layer.0.conv.bias',
       _tensor('0', store0.size, first.size, bias.shape, (1,))),
      ('output.weight', _tensor('1', store1.size, middle.size, last.shape,
                                (f * 9, 9, 3, 1))),
  ]
  path = tmp_path / 'tiny.pth'
  _write_zip(path, _state_dict_pickle(entries), {'0': store0, '1': store1})
  return path, (first, middle, bias, last)


def _assert_kernels(params, oihw_kernels):
  """params are exactly conv0..conv<n-1> holding these OIHW kernels as HWIO."""
  assert list(params) == [f'conv{i}' for i in range(len(oihw_kernels))]
  for i, kernel in enumerate(oihw_kernels):
    np.testing.assert_array_equal(params[f'conv{i}']['kernel'],
                                  kernel.transpose(2, 3, 1, 0))


def test_zip_state_dict_maps_to_vdsr_params(tmp_path):
  path, (first, middle, bias, last) = _tiny_port(tmp_path)
  params = weights.load_params(path)
  _assert_kernels(params, [first, middle, last])
  np.testing.assert_array_equal(params['conv1']['bias'], bias)
  np.testing.assert_array_equal(params['conv0']['bias'], 0.0)  # no bias
  np.testing.assert_array_equal(params['conv2']['bias'], 0.0)


def test_a_pickle_that_would_run_code_is_only_read(tmp_path):
  """os.system in the pickle stays a record: nothing runs, one clear error."""
  marker = tmp_path / 'ran'
  evil = (b'\x80\x02' + _global('os', 'system') + b'(' +
          _str(f'touch {marker}') + b'tR.')
  path = tmp_path / 'evil.pth'
  _write_zip(path, evil, {})
  with pytest.raises(weights.WeightsError, match='expected a state_dict'):
    weights.load_params(path)
  assert not marker.exists()


@pytest.mark.parametrize('content,match', [
    (b'not a pickle at all', 'not a torch.save file'),
    (b'\x80\x02J\x01\x00\x00\x00.' * 3, 'wrong magic number'),
    # A valid header, then an object pickle with a bad opcode.
    (b'\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.'
     b'\x80\x02M\xe9\x03.\x80\x02}X\r\x00\x00\x00little_endian\x88s.'
     b'\x80\x02\xff', 'unreadable .pth'),
])
def test_bad_files_give_one_clear_error(tmp_path, content, match):
  path = tmp_path / 'bad.pth'
  path.write_bytes(content)
  with pytest.raises(weights.WeightsError, match=match):
    weights.load_params(path)


def test_wrong_names_and_unfit_tensors(tmp_path):
  entries = [('conv1.weight', _tensor('0', 9, 0, (1, 1, 3, 3), (9, 9, 3, 1)))]
  path = tmp_path / 'names.pth'
  _write_zip(path, _state_dict_pickle(entries), {'0': np.zeros(9)})
  with pytest.raises(weights.WeightsError, match="PyTorch port's names"):
    weights.load_params(path)
  entries = [('input.weight', _tensor('0', 9, 0, (4, 1, 3, 3), (9, 9, 3, 1)))]
  path = tmp_path / 'short.pth'
  _write_zip(path, _state_dict_pickle(entries), {'0': np.zeros(9)})
  with pytest.raises(weights.WeightsError, match='does not fit its storage'):
    weights.load_params(path)
  entries = [('input.weight', _tensor('0', 9, 0, (1, 1, 3, 3), (9, 9, 3, 1),
                                      'LongStorage')),
             ('output.weight', _tensor('1', 9, 0, (1, 1, 3, 3), (9, 9, 3, 1)))]
  path = tmp_path / 'long.pth'
  _write_zip(path, _state_dict_pickle(entries),
             {'0': np.zeros(9, np.int64), '1': np.zeros(9)})
  with pytest.raises(weights.WeightsError,
                     match='input.weight is int64, not a floating-point'):
    weights.load_params(path)
  entries = [('input.weight', _tensor('0', 9, 0, (1, 1, 3, 3), (9, 9, 3, 1),
                                      'ComplexFloatStorage'))]
  path = tmp_path / 'complex.pth'
  _write_zip(path, _state_dict_pickle(entries), {'0': np.zeros(18)})
  with pytest.raises(weights.WeightsError,
                     match='unsupported tensor storage ComplexFloatStorage'):
    weights.load_params(path)


def _legacy_port(path, features=2):
  """A depth-3 port-layout legacy .pth whose first storage is an int64
  buffer (8 bytes per element) and whose middle kernel is a storage view."""
  rng = np.random.default_rng(1)
  first = rng.normal(size=(features, 1, 3, 3)).astype(np.float32)
  middle = rng.normal(size=(features, features, 3, 3)).astype(np.float32)
  last = rng.normal(size=(1, features, 3, 3)).astype(np.float32)
  steps = np.array([7, -3, 2 ** 40], np.int64)
  # Storage 'b' is padding + middle + padding; the middle kernel refers to
  # the view 'v' = b[5 : 5 + middle.size], at offset 0 of the view.
  store_b = np.concatenate([np.full(5, 9.0, np.float32), middle.ravel(),
                            np.full(3, 9.0, np.float32)])
  f = features
  entries = [
      ('steps', _tensor('n', 3, 0, (3,), (1,), 'LongStorage', None)),
      ('input.weight', _tensor('a', first.size, 0, first.shape,
                               (9, 9, 3, 1), legacy_view=None)),
      ('residual_layer.0.conv.weight',
       _tensor('b', store_b.size, 0, middle.shape, (f * 9, 9, 3, 1),
               legacy_view=('v', 5, middle.size))),
      ('output.weight', _tensor('c', last.size, 0, last.shape,
                                (f * 9, 9, 3, 1), legacy_view=None)),
  ]
  _write_legacy(path, _state_dict_pickle(entries),
                {'n': steps, 'a': first, 'b': store_b, 'c': last})
  return steps, first, middle, last


def test_legacy_file_sizes_every_storage_by_its_own_type(tmp_path):
  """An int64 buffer before the weights, and a storage view, read exactly."""
  path = tmp_path / 'legacy.pth'
  steps, first, middle, last = _legacy_port(path)
  tensors = torch_weights.read_tensors(path)
  np.testing.assert_array_equal(tensors['steps'], steps)
  assert tensors['steps'].dtype == np.int64
  _assert_kernels(weights.load_params(path), [first, middle, last])


def test_legacy_storage_nothing_refers_to_is_an_error(tmp_path):
  entries = [('input.weight', _tensor('a', 9, 0, (1, 1, 3, 3), (9, 9, 3, 1),
                                      legacy_view=None))]
  path = tmp_path / 'orphan.pth'
  _write_legacy(path, _state_dict_pickle(entries),
                {'z': np.zeros(4, np.int64), 'a': np.zeros(9)})
  with pytest.raises(weights.WeightsError,
                     match='storage z is never referred to'):
    weights.load_params(path)


def test_legacy_view_outside_its_storage_is_an_error(tmp_path):
  entries = [('input.weight', _tensor('a', 9, 0, (1, 1, 3, 3), (9, 9, 3, 1),
                                      legacy_view=('v', 4, 9)))]
  path = tmp_path / 'view.pth'
  _write_legacy(path, _state_dict_pickle(entries), {'a': np.zeros(9)})
  with pytest.raises(weights.WeightsError,
                     match=r'storage view \[4, 13\) does not fit'):
    weights.load_params(path)


def test_missing_file(tmp_path):
  with pytest.raises(weights.WeightsError, match='No such weights file'):
    weights.load_params(tmp_path / 'nope.pth')


# The public PyTorch port's released model, from ../shared/reference.
def test_the_ports_released_model(reference_dir):
  params = weights.load_params(reference_dir / 'model_epoch_50.pth')
  assert len(params) == 20
  for layer in params.values():
    np.testing.assert_array_equal(layer['bias'], 0.0)  # bias=False
  # Statistics of the tensors as pytorch_vdsr.txt lists them (read there
  # from the raw storages at known offsets).
  for layer, std, peak in (('conv0', 0.1690, 2.202), ('conv1', 0.0211, 1.283),
                           ('conv2', 0.0235, 0.884), ('conv19', 0.1515, 0.528)):
    kernel = params[layer]['kernel']
    assert abs(kernel.std() - std) < 5e-5, layer
    assert abs(np.abs(kernel).max() - peak) < 5e-4, layer
  assert params['conv0']['kernel'].shape == (3, 3, 1, 64)


def test_the_ports_model_loads_without_importing_anything(reference_dir):
  """Loading it in a fresh interpreter imports no torch and no `vdsr`."""
  code = ('import sys; from vdsr_jax import weights; '
          f'weights.load_params({str(reference_dir / "model_epoch_50.pth")!r}); '
          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('torch', 'vdsr')))")
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  result = subprocess.run([sys.executable, '-c', code], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120,
                          check=False)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == '[]'


def test_truncated_legacy_file(reference_dir, tmp_path):
  data = (reference_dir / 'model_epoch_50.pth').read_bytes()
  path = tmp_path / 'cut.pth'
  path.write_bytes(data[:len(data) - 1000])
  with pytest.raises(weights.WeightsError, match='truncated'):
    weights.load_params(path)


def test_read_pickle_keeps_shared_references():
  """A memoised list appended to later is the same object (BINGET)."""
  # [[], <memo 0>] where the inner list gets one item after both refs exist.
  data = b'\x80\x02](]q\x00h\x00e' + b'h\x00' + _int(7) + b'a0.'
  obj = torch_weights.read_pickle(io.BytesIO(data))
  assert obj == [[7], [7]] and obj[0] is obj[1]


def test_bfloat16_and_half_storages_widen_exactly(tmp_path):
  values = np.array([1.0, -2.5, 0.15625, 3.0e38, -1.0e-38, 0.0, 7.0, 0.5, 96.0],
                    np.float32)
  bf16_bits = (values.view(np.uint32) >> 16).astype('<u2')  # exact in bf16
  half = values[[0, 1, 2, 5, 6, 7, 8, 0, 1]].astype('<f2')
  entries = [('input.weight', _tensor('0', 9, 0, (1, 1, 3, 3), (9, 9, 3, 1),
                                      'BFloat16Storage')),
             ('output.weight', _tensor('1', 9, 0, (1, 1, 3, 3), (9, 9, 3, 1),
                                       'HalfStorage'))]
  path = tmp_path / 'narrow.pth'
  _write_zip(path, _state_dict_pickle(entries), {'0': bf16_bits, '1': half})
  tensors = torch_weights.read_tensors(path)
  assert tensors['input.weight'].dtype == np.float32
  np.testing.assert_array_equal(tensors['input.weight'].ravel(),
                                (bf16_bits.astype(np.uint32) << 16).view(
                                    np.float32))
  np.testing.assert_array_equal(tensors['input.weight'].ravel()[:3],
                                values[:3])
  np.testing.assert_array_equal(tensors['output.weight'].ravel(),
                                half.astype(np.float32))
