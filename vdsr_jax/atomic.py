"""Atomic file writes: a reader sees the old file or the new one, never half.

Every file this package writes that someone may rely on (weights, images,
evaluation JSON, a run's flags.txt and metrics.jsonl) goes through `write`:
the data goes to a temporary file in the same folder, which then replaces
the target with `os.replace` (atomic on POSIX and Windows). An exception or
Ctrl-C while writing leaves the previous file as it was and no temporary
file behind.
"""

import contextlib
import os
import pathlib
import tempfile
from typing import IO, Iterator, Union

PathLike = Union[str, os.PathLike]


def _default_mode() -> int:
  """The permissions `open` would give a new file (0666 minus the umask)."""
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


@contextlib.contextmanager
def write(path: PathLike, mode: str = 'wb') -> Iterator[IO]:
  """Opens a temporary file that replaces `path` when the block succeeds.

  Args:
    path: the file to write; its folder is created if missing.
    mode: 'wb' or 'w' (text, UTF-8).

  Yields:
    The open temporary file.
  """
  if mode not in ('w', 'wb'):
    raise ValueError(f"atomic.write mode must be 'w' or 'wb', got {mode!r}.")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.',
                             suffix='.tmp')
  try:
    # mkstemp creates the file private (0600); give it the usual mode.
    os.chmod(tmp, _default_mode())
    with os.fdopen(fd, mode, **({} if 'b' in mode else
                                {'encoding': 'utf-8'})) as f:
      yield f
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text(path: PathLike, text: str) -> None:
  """`pathlib.Path.write_text`, atomically."""
  with write(path, 'w') as f:
    f.write(text)
