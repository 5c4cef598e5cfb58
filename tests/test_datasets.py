"""Tests for vdsr_jax.datasets: preparing, reading back, and clear errors."""

import hashlib
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import zlib

import numpy as np
from PIL import Image
import pytest

from vdsr_jax import datasets

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pil_decode(path):
  """Independent reference decode: plain PIL, gray as HxWx1."""
  with Image.open(path) as image:
    array = np.asarray(image)
  return array[..., None] if array.ndim == 2 else array


def _copy_set5(datasets_dir, root, *, manifest=False, skip=()):
  """Copies Set5 (minus `skip`) to root/Set5, with a Set5-only manifest."""
  (root / 'Set5').mkdir(parents=True)
  for path in sorted((datasets_dir / 'Set5').iterdir()):
    if path.name not in skip:
      shutil.copy(path, root / 'Set5' / path.name)
  if manifest:
    lines = [
        line
        for line in (datasets_dir / 'MANIFEST.sha256').read_text().splitlines()
        if line.split()[-1].startswith('Set5/')
    ]
    (root / 'MANIFEST.sha256').write_text('\n'.join(lines) + '\n')
  return root


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='module')
def set5(datasets_dir, tfds_dir):
  return datasets.load('set5', data_dir=datasets_dir, tfds_dir=tfds_dir)


@pytest.fixture(scope='module')
def set14(datasets_dir, tfds_dir):
  return datasets.load('set14', data_dir=datasets_dir, tfds_dir=tfds_dir)


@pytest.mark.parametrize('name', ['set5', 'set14'])
def test_reads_back_pixel_identical(name, request, datasets_dir):
  source = request.getfixturevalue(name)
  folder = datasets_dir / datasets.builder_class(name).FOLDER
  files = sorted(folder.glob('*.png'))
  assert len(source) == len(files) == {'set5': 5, 'set14': 14}[name]
  assert [x['name'] for x in source] == [f.stem for f in files]
  for i, path in enumerate(files):
    item = source[i]
    assert isinstance(item['name'], str)
    assert item['image'].dtype == np.uint8
    np.testing.assert_array_equal(item['image'], _pil_decode(path))


def test_set5_names_and_sizes(set5):
  sizes = {x['name']: x['image'].shape for x in set5}
  assert sizes == {
      'baby': (512, 512, 3),
      'bird': (288, 288, 3),
      'butterfly': (256, 256, 3),
      'head': (280, 280, 3),
      'woman': (344, 228, 3),
  }


def test_set14_bridge_stays_one_channel(set14):
  channels = {x['name']: x['image'].shape[-1] for x in set14}
  assert channels.pop('bridge') == 1
  assert set(channels.values()) == {3}  # man is R=G=B but stored RGB
  assert set14[2]['name'] == 'bridge'
  assert set14[2]['image'].shape == (512, 512, 1)


def test_sequence_access(set5):
  assert set5[-1]['name'] == 'woman'
  assert [x['name'] for x in set5[1:3]] == ['bird', 'butterfly']
  assert [x['name'] for x in set5.__getitems__([4, 0])] == ['woman', 'baby']
  with pytest.raises(IndexError):
    set5[5]
  image = set5[0]['image']
  image[0, 0] = 0  # items are the caller's own, writable arrays
  assert image.flags.writeable


def test_second_load_is_fast_and_idempotent(set5, datasets_dir, tfds_dir):
  del set5  # prepared by the fixture
  files = sorted(p for p in (tfds_dir / 'set5').rglob('*') if p.is_file())
  before = {p: p.stat().st_mtime_ns for p in files}
  start = time.perf_counter()
  again = datasets.load('set5', data_dir=datasets_dir, tfds_dir=tfds_dir)
  assert time.perf_counter() - start < 1.0
  assert len(again) == 5
  after = sorted(p for p in (tfds_dir / 'set5').rglob('*') if p.is_file())
  assert {p: p.stat().st_mtime_ns for p in after} == before


def test_environment_variables(datasets_dir, tmp_path, monkeypatch):
  monkeypatch.setenv('VDSR_DATA_DIR', str(datasets_dir))
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  assert datasets.source_dir() == datasets_dir
  assert len(datasets.load('set5')) == 5
  assert list(tmp_path.glob('set5/1.0.0/*.array_record-*'))


def test_source_dir_default(monkeypatch):
  monkeypatch.delenv('VDSR_DATA_DIR', raising=False)
  default = (REPO_ROOT.parent / 'shared' / 'datasets').resolve()
  if default.is_dir():
    assert datasets.source_dir() == default
  else:
    with pytest.raises(datasets.DatasetError, match='VDSR_DATA_DIR'):
      datasets.source_dir()


def test_unknown_name():
  with pytest.raises(datasets.DatasetError) as e:
    datasets.load('set6')
  assert 'set6' in str(e.value)
  for name in datasets.DATASETS:
    assert name in str(e.value)


def test_missing_source_folder(tmp_path):
  missing = tmp_path / 'nowhere'
  with pytest.raises(datasets.DatasetError) as e:
    datasets.load('set5', data_dir=missing, tfds_dir=tmp_path / 'tfds')
  message = str(e.value)
  assert str(missing) in message
  assert '--data_dir' in message and 'VDSR_DATA_DIR' in message
  assert 'Set5/*.png' in message


def test_missing_dataset_subfolder(tmp_path):
  (tmp_path / 'src').mkdir()
  with pytest.raises(datasets.DatasetError) as e:
    datasets.load('urban100', data_dir=tmp_path / 'src', tfds_dir=tmp_path)
  assert str(tmp_path / 'src' / 'Urban100') in str(e.value)
  assert 'Urban100/*.png' in str(e.value)


def test_incomplete_folder(datasets_dir, tmp_path):
  src = _copy_set5(datasets_dir, tmp_path / 'src', skip={'head.png'})
  with pytest.raises(datasets.DatasetError, match='found 4 images, expected 5'):
    datasets.load('set5', data_dir=src, tfds_dir=tmp_path / 'tfds')


def test_incomplete_folder_with_manifest_names_the_file(datasets_dir, tmp_path):
  src = _copy_set5(
      datasets_dir, tmp_path / 'src', manifest=True, skip={'head.png'}
  )
  with pytest.raises(datasets.DatasetError, match='incomplete.*Set5/head.png'):
    datasets.load('set5', data_dir=src, tfds_dir=tmp_path / 'tfds')


def test_file_not_in_manifest(datasets_dir, tmp_path):
  src = _copy_set5(datasets_dir, tmp_path / 'src', manifest=True)
  shutil.copy(src / 'Set5' / 'bird.png', src / 'Set5' / 'extra.png')
  with pytest.raises(datasets.DatasetError, match='not listed.*extra.png'):
    datasets.load('set5', data_dir=src, tfds_dir=tmp_path / 'tfds')


@pytest.mark.parametrize('damage', ['truncated', 'garbage'])
def test_corrupt_image_names_the_file(damage, datasets_dir, tmp_path):
  src = _copy_set5(datasets_dir, tmp_path / 'src')
  bird = src / 'Set5' / 'bird.png'
  data = bird.read_bytes()
  bird.write_bytes(data[:5000] if damage == 'truncated' else b'no png' * 99)
  tfds_dir = tmp_path / 'tfds'
  with pytest.raises(datasets.DatasetError, match='bird.png'):
    datasets.load('set5', data_dir=src, tfds_dir=tfds_dir)
  # Nothing half-prepared is left behind: once repaired, it prepares.
  bird.write_bytes(data)
  assert len(datasets.load('set5', data_dir=src, tfds_dir=tfds_dir)) == 5


def test_checksum_mismatch(datasets_dir, tmp_path):
  src = _copy_set5(datasets_dir, tmp_path / 'src', manifest=True)
  manifest = src / 'MANIFEST.sha256'
  wrong = hashlib.sha256(b'not the image').hexdigest()
  lines = [
      f'{wrong}  Set5/butterfly.png' if line.endswith('Set5/butterfly.png')
      else line
      for line in manifest.read_text().splitlines()
  ]
  manifest.write_text('\n'.join(lines) + '\n')
  with pytest.raises(datasets.DatasetError, match='Checksum.*butterfly.png'):
    datasets.load('set5', data_dir=src, tfds_dir=tmp_path / 'tfds')


def test_read_image_modes(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
  gray = rgb[..., 0]
  cases = {
      'rgb.png': (Image.fromarray(rgb), rgb),
      'gray.png': (Image.fromarray(gray), gray[..., None]),
      'rgba.png': (Image.fromarray(rgb).convert('RGBA'), rgb),
      'gray_alpha.png': (Image.fromarray(gray).convert('LA'), gray[..., None]),
      'palette.png': (
          Image.fromarray(rgb).quantize(8),
          np.asarray(Image.fromarray(rgb).quantize(8).convert('RGB')),
      ),
  }
  for filename, (image, expected) in cases.items():
    image.save(tmp_path / filename)
    got = datasets.read_image(tmp_path / filename)
    assert got.dtype == np.uint8, filename
    np.testing.assert_array_equal(got, expected, err_msg=filename)


def test_read_image_applies_exif_orientation(tmp_path):
  rgb = np.random.default_rng(1).integers(0, 256, (4, 7, 3), dtype=np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6  # display rotated 90 degrees clockwise
  Image.fromarray(rgb).save(tmp_path / 'rotated.png', exif=exif)
  got = datasets.read_image(tmp_path / 'rotated.png')
  np.testing.assert_array_equal(got, np.rot90(rgb, k=-1))


def _rgb48_png():
  """A 1x1 16-bit RGB PNG (PIL cannot write one)."""

  def chunk(kind, data):
    crc = zlib.crc32(kind + data).to_bytes(4, 'big')
    return len(data).to_bytes(4, 'big') + kind + data + crc

  header = struct.pack('>IIBBBBB', 1, 1, 16, 2, 0, 0, 0)
  pixels = zlib.compress(b'\x00' + bytes(range(6)))
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header)
          + chunk(b'IDAT', pixels) + chunk(b'IEND', b''))


def test_read_image_errors(tmp_path):
  Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / 'deep.png')
  with pytest.raises(datasets.DatasetError, match='deep.png.*16-bit'):
    datasets.read_image(tmp_path / 'deep.png')
  (tmp_path / 'rgb48.png').write_bytes(_rgb48_png())
  with pytest.raises(datasets.DatasetError, match='rgb48.png.*16-bit'):
    datasets.read_image(tmp_path / 'rgb48.png')  # PIL would give 8 bits
  (tmp_path / 'bad.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
  with pytest.raises(datasets.DatasetError, match='bad.jpg'):
    datasets.read_image(tmp_path / 'bad.jpg')
  with pytest.raises(datasets.DatasetError, match='missing.png'):
    datasets.read_image(tmp_path / 'missing.png')


# Blocks `import tensorflow` as if it were not installed. (Setting
# sys.modules['tensorflow'] = None does not work: TFDS and etils take
# "'tensorflow' in sys.modules" to mean TensorFlow is loaded.)
_WITHOUT_TENSORFLOW = textwrap.dedent("""
    import importlib.abc, importlib.util, sys

    class NoTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
      def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] == 'tensorflow':
          return importlib.util.spec_from_loader(name, self)
        return None
      def create_module(self, spec):
        raise ImportError(f'{spec.name} is blocked by the test')
      def exec_module(self, module):
        pass

    sys.meta_path.insert(0, NoTensorFlow())
    from vdsr_jax import datasets
    source = datasets.load('set5', data_dir=sys.argv[1], tfds_dir=sys.argv[2])
    assert [x['name'] for x in source][:2] == ['baby', 'bird'], source
    assert source[0]['image'].shape == (512, 512, 3)
    assert 'tensorflow' not in sys.modules
    print('loaded without tensorflow')
""")


def test_prepares_and_reads_without_tensorflow(datasets_dir, tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  result = subprocess.run(
      [sys.executable, '-c', _WITHOUT_TENSORFLOW, str(datasets_dir),
       str(tmp_path / 'tfds')],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
      check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'loaded without tensorflow' in result.stdout


def test_download_path_offline(datasets_dir, tmp_path, monkeypatch):
  """The download=True wiring, with TFDS's download manager faked."""
  extracted = tmp_path / 'extracted'
  shutil.copytree(datasets_dir / 'Set5', extracted / 'archive' / 'Set5_HR')
  requested = []

  def fake_download_and_extract(self, urls):
    del self
    requested.append(urls)
    return [extracted for _ in urls]

  monkeypatch.setattr(
      datasets.tfds.download.DownloadManager,
      'download_and_extract',
      fake_download_and_extract,
  )
  source = datasets.load(
      'set5', data_dir=tmp_path / 'empty', tfds_dir=tmp_path / 'tfds',
      download=True,
  )
  assert requested == [[datasets.SET5_URL]]
  assert [x['name'] for x in source] == [
      'baby', 'bird', 'butterfly', 'head', 'woman'
  ]
