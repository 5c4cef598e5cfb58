"""Super-resolution image sets as TFDS datasets that read without TensorFlow.

Five builders are registered with TFDS: `set5`, `set14`, `b100`, `urban100`
(split `test`) and `train291` (split `train`). Each example is
`{'image': uint8 HxWxC, 'name': str}` with C = 1 or 3 as stored in the file
(Set14's `bridge` stays 1-channel: evaluation treats it as its own luminance).
Examples are sorted by name, so index i is always the same image.

The images are prepared once from a local folder of the original files into
ArrayRecord files, then read by random access (`builder.as_data_source()`).
Neither step imports TensorFlow: images are stored as
`tfds.features.Tensor(encoding='zlib')` (raw pixels, zlib-compressed), because
`tfds.features.Image` needs TensorFlow to encode arrays. This is ~25% larger
than PNG but about twice as fast to encode and to read back.

Typical use:

  examples = datasets.load('set14')
  example = examples[2]  # {'image': (512, 512, 1) uint8, 'name': 'bridge'}

Where things live:

* Source images: `data_dir` argument > `$VDSR_DATA_DIR` >
  `<repo root>/../shared/datasets`, laid out as `<dir>/Set5/*.png`,
  `<dir>/Set14/*.png`, `<dir>/B100/*.jpg`, `<dir>/Urban100/*.png`,
  `<dir>/train291/{T91,BSDS200}/*.png`. If `<dir>/MANIFEST.sha256` exists
  (`sha256sum` lines relative to `<dir>`), every file is checked against it.
* Prepared ArrayRecord files: `tfds_dir` argument > `$TFDS_DATA_DIR` > the
  TFDS default (`~/tensorflow_datasets`). They are reused as they are: after
  changing the source images, delete `<tfds_dir>/<name>/` to prepare again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
import dataclasses
import hashlib
import inspect
import io
import operator
import os
import pathlib
from typing import Any

from etils import epath
import numpy as np
from PIL import Image
from PIL import ImageOps
import tensorflow_datasets as tfds

DATASETS = ('set5', 'set14', 'b100', 'urban100', 'train291')

DATA_DIR_ENV = 'VDSR_DATA_DIR'
TFDS_DIR_ENV = 'TFDS_DATA_DIR'
MANIFEST_NAME = 'MANIFEST.sha256'
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'

# Public download locations, used only by `load(..., download=True)` when no
# local folder exists. They could not be tested offline; the downloaded files
# are not the exact bytes of the shared folder (no MANIFEST is checked for
# them, only the image count).
SET5_URL = 'https://huggingface.co/datasets/eugenesiow/Set5/resolve/main/data/Set5_HR.tar.gz'
SET14_URL = 'https://huggingface.co/datasets/eugenesiow/Set14/resolve/main/data/Set14_HR.tar.gz'
URBAN100_URL = 'https://huggingface.co/datasets/eugenesiow/Urban100/resolve/main/data/Urban100_HR.tar.gz'
# The original BSDS300 JPEGs: images/test is B100, images/train is BSDS200.
BSDS300_URL = 'https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/bsds/BSDS300-images.tgz'
# The SRCNN training package; its Train/ folder holds the 91 images (BMP).
SRCNN_TRAIN_URL = 'http://mmlab.ie.cuhk.edu.hk/projects/SRCNN/SRCNN_train.zip'


class DatasetError(ValueError):
  """Source images are missing, incomplete, corrupt, or the name is unknown."""


def read_image(path: os.PathLike[str] | str) -> np.ndarray:
  """Reads an image file as uint8 HxWxC, C = 1 (gray) or 3 (RGB).

  EXIF orientation is applied. Gray (`L`, `LA`, `1`) stays 1 channel; every
  other mode (palette, RGBA, CMYK, ...) becomes RGB, alpha is dropped.
  16-bit and float images are refused rather than silently rounded.

  Args:
    path: the image file.

  Returns:
    A writable uint8 array of shape (H, W, C).

  Raises:
    DatasetError: the file cannot be read or decoded; the message names it.
  """
  try:
    data = pathlib.Path(path).read_bytes()
  except OSError as e:
    raise DatasetError(f'Cannot read image file {path}: {e}') from None
  return _decode_image(data, path)


def _decode_image(data: bytes, path: os.PathLike[str] | str) -> np.ndarray:
  """Decodes image file bytes; see `read_image`."""
  # PIL opens 16-bit RGB PNGs as 8-bit 'RGB' without a word: check IHDR.
  if data.startswith(_PNG_SIGNATURE) and len(data) > 24 and data[24] == 16:
    raise DatasetError(
        f'{path} is a 16-bit PNG; only 8-bit images are supported.'
    )
  try:
    with Image.open(io.BytesIO(data)) as image:
      image = ImageOps.exif_transpose(image)
      image.load()
  except Exception as e:  # pylint: disable=broad-except
    # PIL raises many types for bad files (OSError, SyntaxError, ...).
    raise DatasetError(
        f'Cannot decode image file {path}: {type(e).__name__}: {e}'
    ) from None
  if image.mode in ('1', 'LA'):
    image = image.convert('L')
  elif image.mode.startswith(('I', 'F')):
    raise DatasetError(
        f'{path} has mode {image.mode} (16-bit or float); only 8-bit images'
        ' are supported.'
    )
  elif image.mode not in ('L', 'RGB'):
    image = image.convert('RGB')
  array = np.array(image, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def _default_source_dir() -> pathlib.Path:
  """`<repo root>/../shared/datasets`; repo root = parent of this package."""
  return pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'datasets'


def source_dir(data_dir: os.PathLike[str] | str | None = None) -> pathlib.Path:
  """Returns the folder holding the source image folders (Set5/, ...).

  Args:
    data_dir: explicit folder; if None, `$VDSR_DATA_DIR`, then
      `<repo root>/../shared/datasets`.

  Raises:
    DatasetError: the chosen folder does not exist.
  """
  if data_dir is not None:
    path, origin = pathlib.Path(data_dir), 'given as data_dir'
  elif os.environ.get(DATA_DIR_ENV):
    path, origin = pathlib.Path(os.environ[DATA_DIR_ENV]), f'${DATA_DIR_ENV}'
  else:
    path, origin = _default_source_dir(), 'the default'
  path = path.expanduser()
  if not path.is_dir():
    raise DatasetError(
        f'Source image folder {path} ({origin}) does not exist. Point at'
        f' another with --data_dir=DIR or {DATA_DIR_ENV}=DIR. Expected'
        f' layout: {_LAYOUT_HELP}.'
    )
  return path


def _read_manifest(root: pathlib.Path) -> dict[str, str] | None:
  """Reads `root/MANIFEST.sha256` as {relative posix path: sha256}."""
  path = root / MANIFEST_NAME
  if not path.is_file():
    return None
  manifest = {}
  for line in path.read_text().splitlines():
    if not line.strip():
      continue
    digest, sep, name = line.partition(' ')
    if not sep or len(digest) != 64:
      raise DatasetError(f'{path}: not a sha256sum line: {line!r}')
    # sha256sum writes '<hash>  name' (text) or '<hash> *name' (binary).
    manifest[name.lstrip(' *')] = digest.lower()
  return manifest


@dataclasses.dataclass(frozen=True)
class _SourceFile:
  """One source image: its example name, path and expected sha256 (if any)."""

  name: str
  path: pathlib.Path
  sha256: str | None = None


def _list_images(folder: pathlib.Path, prefix: str = '') -> list[_SourceFile]:
  """Lists image files under `folder` (recursively), named by relative stem."""
  files = []
  for path in folder.rglob('*'):
    relative = path.relative_to(folder)
    if (
        path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith('.') for part in relative.parts)
        and path.is_file()
    ):
      name = relative.with_suffix('').as_posix()
      files.append(_SourceFile(f'{prefix}/{name}' if prefix else name, path))
  return files


class _SRImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base builder: a folder of images -> {'image', 'name'}, sorted by name."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'uint8 HxWxC images (zlib), sorted by name.'}

  FOLDER = ''  # subfolder of the source dir
  SPLIT = 'test'
  NUM_IMAGES = 0
  LAYOUT = ''  # for error messages, relative to the source dir
  HOMEPAGE = ''
  # Example-name prefix -> (archive URL, folder inside the archive).
  DOWNLOADS: Mapping[str, tuple[str, str]] = {}

  def __init__(
      self,
      *,
      source_root: os.PathLike[str] | str | None = None,
      download: bool = False,
      **kwargs: Any,
  ):
    """Creates the builder.

    Args:
      source_root: folder holding `FOLDER`; None: see `source_dir`. Only read
        when preparing. (TFDS's own `data_dir` is where prepared files go.)
      download: when no local folder exists, download from `DOWNLOADS`.
      **kwargs: for `tfds.core.GeneratorBasedBuilder` (data_dir, file_format).
    """
    self._source_root = source_root
    self._download = download
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10's version needs the `importlib_resources` backport (not
    # installed on Python >= 3.9) for builders defined inside a package.
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(self.__class__.__doc__ or '').strip(),
        features=tfds.features.FeaturesDict({
            # Channels vary within a set (Set14): hence Tensor, not Image.
            'image': tfds.features.Tensor(
                shape=(None, None, None), dtype=np.uint8, encoding='zlib'
            ),
            'name': tfds.features.Text(),
        }),
        homepage=self.HOMEPAGE or None,
        disable_shuffling=True,  # keep the sorted-by-name order
    )

  def local_files(self) -> list[_SourceFile] | None:
    """Lists and checks the local source files (without reading them).

    Returns:
      The files sorted by name, or None if no local folder exists and
      `download` was asked for.

    Raises:
      DatasetError: the folder is missing (and no download was asked for),
        incomplete, or does not match its MANIFEST.sha256.
    """
    try:
      root = source_dir(self._source_root)
    except DatasetError:
      if self._download and self.DOWNLOADS:
        return None
      raise
    folder = root / self.FOLDER
    if not folder.is_dir():
      if self._download and self.DOWNLOADS:
        return None
      raise DatasetError(
          f'Dataset folder {folder} does not exist. Expected'
          f' {root}/{self.LAYOUT}. Point at another source folder with'
          f' --data_dir=DIR or {DATA_DIR_ENV}=DIR (layout: {_LAYOUT_HELP}).'
      )
    files = _list_images(folder)
    manifest = _read_manifest(root)
    if manifest is not None:
      files = self._match_manifest(files, root, manifest)
    return self._checked(files, folder)

  def _match_manifest(
      self,
      files: list[_SourceFile],
      root: pathlib.Path,
      manifest: Mapping[str, str],
  ) -> list[_SourceFile]:
    """Attaches expected hashes; every file must be listed and present."""
    found = {f.path.relative_to(root).as_posix(): f for f in files}
    prefix = f'{self.FOLDER}/'
    listed = {
        k for k in manifest
        if k.startswith(prefix) and k.lower().endswith(IMAGE_SUFFIXES)
    }
    missing = sorted(listed - found.keys())
    if missing:
      raise DatasetError(
          f'{root / self.FOLDER} is incomplete: {len(missing)} file(s) listed'
          f' in {root / MANIFEST_NAME} are missing: {_shortlist(missing)}.'
      )
    unlisted = sorted(found.keys() - listed)
    if unlisted:
      raise DatasetError(
          f'{root / self.FOLDER} holds file(s) not listed in'
          f' {root / MANIFEST_NAME}: {_shortlist(unlisted)}. Remove them or'
          ' update the manifest.'
      )
    return [
        dataclasses.replace(f, sha256=manifest[key])
        for key, f in found.items()
    ]

  def _checked(
      self, files: list[_SourceFile], folder: pathlib.Path | str
  ) -> list[_SourceFile]:
    """Checks for the expected number of unique names; sorts by name."""
    names = [f.name for f in files]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
      raise DatasetError(
          f'{folder}: several files share a name (different suffixes):'
          f' {_shortlist(duplicates)}.'
      )
    if len(files) != self.NUM_IMAGES:
      raise DatasetError(
          f'{folder} is incomplete or has extra files: found {len(files)}'
          f' images, expected {self.NUM_IMAGES} ({self.LAYOUT}).'
      )
    return sorted(files, key=lambda f: f.name)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    files = self.local_files()
    if files is None:
      files = self._downloaded_files(dl_manager)
    return {self.SPLIT: self._generate_examples(files)}

  def _generate_examples(
      self, files: Sequence[_SourceFile]
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    for f in files:
      try:
        data = f.path.read_bytes()
      except OSError as e:
        raise DatasetError(f'Cannot read image file {f.path}: {e}') from None
      if f.sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != f.sha256:
          raise DatasetError(
              f'Checksum mismatch for {f.path}: sha256 {digest}, the'
              f' {MANIFEST_NAME} expects {f.sha256}.'
          )
      yield f.name, {'image': _decode_image(data, f.path), 'name': f.name}

  # Downloading needs internet: the URLs themselves are untested here.
  def _downloaded_files(
      self, dl_manager: tfds.download.DownloadManager
  ) -> list[_SourceFile]:
    """Downloads `DOWNLOADS` with the TFDS download manager and lists them."""
    urls = [url for url, _ in self.DOWNLOADS.values()]
    extracted = dl_manager.download_and_extract(urls)
    files = []
    for (prefix, (_, inner)), path in zip(self.DOWNLOADS.items(), extracted):
      folder = _find_folder(pathlib.Path(path), inner)
      files.extend(_list_images(folder, prefix))
    return self._checked(files, ', '.join(urls))


def _find_folder(root: pathlib.Path, inner: str) -> pathlib.Path:
  """Finds `inner` (e.g. 'BSDS300/images/test') anywhere below `root`."""
  if (root / inner).is_dir():
    return root / inner
  for path in sorted(root.rglob(pathlib.PurePosixPath(inner).name)):
    if path.is_dir() and path.as_posix().endswith(inner):
      return path
  raise DatasetError(f'No folder {inner!r} in the download at {root}.')


class Set5(_SRImages):
  """Set5 (Bevilacqua et al., BMVC 2012): 5 RGB test images."""

  FOLDER = 'Set5'
  NUM_IMAGES = 5
  LAYOUT = 'Set5/*.png'
  HOMEPAGE = 'http://people.rennes.inria.fr/Aline.Roumy/results/SR_BMVC12.html'
  DOWNLOADS = {'': (SET5_URL, 'Set5_HR')}


class Set14(_SRImages):
  """Set14 (Zeyde et al., 2010): 14 test images; `bridge` is 1-channel."""

  FOLDER = 'Set14'
  NUM_IMAGES = 14
  LAYOUT = 'Set14/*.png'
  HOMEPAGE = 'https://sites.google.com/site/romanzeyde/research-interests'
  DOWNLOADS = {'': (SET14_URL, 'Set14_HR')}


class B100(_SRImages):
  """B100 (BSDS300 test split, Martin et al., ICCV 2001): 100 JPEG images."""

  FOLDER = 'B100'
  NUM_IMAGES = 100
  LAYOUT = 'B100/*.jpg'
  HOMEPAGE = 'https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/bsds/'
  DOWNLOADS = {'': (BSDS300_URL, 'BSDS300/images/test')}


class Urban100(_SRImages):
  """Urban100 (Huang et al., CVPR 2015): 100 RGB test images of buildings."""

  FOLDER = 'Urban100'
  NUM_IMAGES = 100
  LAYOUT = 'Urban100/*.png'
  HOMEPAGE = 'https://github.com/jbhuang0604/SelfExSR'
  DOWNLOADS = {'': (URBAN100_URL, 'Urban100_HR')}


class Train291(_SRImages):
  """VDSR training set: T91 (Yang et al.) + BSDS200; names 'T91/t1', ...."""

  FOLDER = 'train291'
  SPLIT = 'train'
  NUM_IMAGES = 291
  LAYOUT = 'train291/T91/*.png + train291/BSDS200/*.png'
  HOMEPAGE = 'https://cv.snu.ac.kr/research/VDSR/'
  DOWNLOADS = {
      'T91': (SRCNN_TRAIN_URL, 'Train'),
      'BSDS200': (BSDS300_URL, 'BSDS300/images/train'),
  }


_BUILDERS = {
    cls.name: cls for cls in (Set5, Set14, B100, Urban100, Train291)
}
assert tuple(_BUILDERS) == DATASETS
_LAYOUT_HELP = ', '.join(f'DIR/{cls.LAYOUT}' for cls in _BUILDERS.values())


def _shortlist(items: Sequence[str], limit: int = 5) -> str:
  """'a, b, c' with at most `limit` items."""
  more = f' and {len(items) - limit} more' if len(items) > limit else ''
  return ', '.join(items[:limit]) + more


def builder_class(name: str) -> type[_SRImages]:
  """Returns the builder class of a dataset name (one of `DATASETS`)."""
  try:
    return _BUILDERS[name.lower()]
  except (KeyError, AttributeError):
    raise DatasetError(
        f'Unknown dataset {name!r}; valid names: {", ".join(DATASETS)}.'
    ) from None


class _NamedImages(Sequence):
  """Random access to {'image': uint8 HxWxC, 'name': str} dicts."""

  def __init__(self, source: Any):
    self.source = source  # the TFDS ArrayRecordDataSource

  def __len__(self) -> int:
    return len(self.source)

  def _index(self, index: Any) -> int:
    i, n = operator.index(index), len(self.source)
    if not -n <= i < n:
      raise IndexError(f'index {index} out of range for {n} images')
    return i % n

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.__getitems__(range(*index.indices(len(self))))
    return _to_item(self.source[self._index(index)])

  def __getitems__(self, indices):
    indices = [self._index(i) for i in indices]
    return [_to_item(x) for x in self.source.__getitems__(indices)]

  def __repr__(self) -> str:
    return f'{type(self).__name__}({self.source!r}, len={len(self)})'


def _to_item(example: Mapping[str, Any]) -> dict[str, Any]:
  """TFDS example -> {'image': writable array, 'name': str}."""
  name = example['name']
  return {
      'image': np.array(example['image']),  # TFDS hands out read-only views
      'name': name.decode('utf-8') if isinstance(name, bytes) else str(name),
  }


def load(
    name: str,
    *,
    data_dir: os.PathLike[str] | str | None = None,
    tfds_dir: os.PathLike[str] | str | None = None,
    download: bool = False,
) -> Sequence[dict[str, Any]]:
  """Prepares a dataset if needed and returns its images by random access.

  Preparing is done once per `tfds_dir`; later calls only open the files.

  Args:
    name: one of `DATASETS`.
    data_dir: source image folder; see `source_dir`. Only read when
      preparing.
    tfds_dir: where the prepared ArrayRecord files go; None:
      `$TFDS_DATA_DIR`, then the TFDS default.
    download: if no local source folder exists, download the images (needs
      internet; see the `*_URL` constants).

  Returns:
    A sequence (len, [i], slices) of {'image': uint8 HxWxC, 'name': str},
    sorted by name.

  Raises:
    DatasetError: unknown name, or missing/incomplete/corrupt source files.
  """
  cls = builder_class(name)
  if tfds_dir is None:
    tfds_dir = os.environ.get(TFDS_DIR_ENV) or None
  builder = cls(
      data_dir=os.fspath(tfds_dir) if tfds_dir is not None else None,
      file_format='array_record',
      source_root=data_dir,
      download=download,
  )
  if not builder.is_prepared():
    builder.local_files()  # Fails early, before TFDS, on missing files.
    try:
      builder.download_and_prepare()
    except DatasetError as e:
      # Raised while reading the images; drop the TFDS frames from the trace.
      raise DatasetError(*e.args) from None
  return _NamedImages(builder.as_data_source(split=cls.SPLIT))
