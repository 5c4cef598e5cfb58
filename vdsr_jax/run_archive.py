"""A training run as one file, to continue it on another machine.

A run's workdir (`experiments/train.py --workdir`) holds its flags.txt,
metrics.jsonl, TensorBoard events and a few checkpoints. To carry a run
between machines that share no disk (the development machine and a lent
accelerator, two Colab sessions, a session that ends and the next one), only
three things are needed: flags.txt, metrics.jsonl and the newest checkpoint.
`pack` writes them to a gzipped tar; `unpack` recreates a workdir from it,
which `experiments/train.py` then resumes exactly (batches are a pure
function of seed and step, and the checkpoint holds the whole train state).

Both are all-or-nothing: `pack` writes the archive atomically, `unpack`
extracts into a temporary folder beside the target and renames it into
place, and refuses to touch a workdir that already exists. An archive member
that is not a plain file or folder, or whose path leaves the workdir, is an
error before anything is written. Pack a stopped run: one still training
deletes older checkpoints as it saves, and a file gone mid-pack is an error
(the archive is then not written).
"""

import io
import json
import pathlib
import shutil
import tarfile
import tempfile
from typing import Any, Dict

from vdsr_jax import atomic
from vdsr_jax import checkpointing
from vdsr_jax import reporting
from vdsr_jax import train_config

INFO_FILE = 'run_archive.json'


class RunArchiveError(ValueError):
  """A workdir cannot be packed, or an archive cannot be unpacked."""


def _latest_step_dir(workdir: pathlib.Path) -> pathlib.Path:
  try:
    return checkpointing.find_step_dir(checkpointing.checkpoint_dir(workdir))
  except ValueError as e:  # weights.WeightsError
    raise RunArchiveError(f'{workdir} has no checkpoint to carry: {e}') from None


def pack(workdir, archive) -> Dict[str, Any]:
  """Writes flags.txt, metrics.jsonl and the newest checkpoint to `archive`.

  Returns:
    What was packed: {'step', 'files'} (also stored in the archive as
    run_archive.json, for a reader that does not want to extract it).
  """
  workdir = pathlib.Path(workdir).expanduser().absolute()
  if not (workdir / train_config.FLAGS_FILE).is_file():
    raise RunArchiveError(f'{workdir} is not a training workdir (no '
                          f'{train_config.FLAGS_FILE}).')
  step_dir = _latest_step_dir(workdir)
  members = [workdir / train_config.FLAGS_FILE]
  if (workdir / reporting.METRICS_FILE).is_file():
    members.append(workdir / reporting.METRICS_FILE)
  members += sorted(p for p in step_dir.rglob('*') if p.is_file())
  names = [p.relative_to(workdir).as_posix() for p in members]
  info = {'step': int(step_dir.name), 'files': names}
  with atomic.write(archive, 'wb') as f:
    with tarfile.open(fileobj=f, mode='w:gz') as tar:
      data = json.dumps(info, indent=1).encode()
      entry = tarfile.TarInfo(INFO_FILE)
      entry.size = len(data)
      tar.addfile(entry, io.BytesIO(data))
      for path, name in zip(members, names):
        try:
          tar.add(path, arcname=name, recursive=False)
        except FileNotFoundError as e:
          # A run still training deletes older checkpoints as it saves.
          raise RunArchiveError(
              f'{workdir} changed while it was packed ({e}); is it still '
              'training? Pack a stopped run. The archive was not written.'
          ) from None
  return info


def _check_member(member: tarfile.TarInfo) -> None:
  parts = pathlib.PurePosixPath(member.name).parts
  if (not parts or member.name.startswith('/') or '..' in parts
      or not (member.isfile() or member.isdir())):
    raise RunArchiveError(
        f'archive member {member.name!r} is not a plain file or folder '
        'inside the run; refusing to unpack anything.')


def unpack(archive, workdir) -> Dict[str, Any]:
  """Recreates a workdir from a `pack` archive; returns its run_archive.json.

  `workdir` must not exist yet, so that nothing there is overwritten.
  """
  archive = pathlib.Path(archive).expanduser()
  workdir = pathlib.Path(workdir).expanduser().absolute()
  if workdir.exists():
    raise RunArchiveError(f'{workdir} already exists; unpack into a new '
                          'folder (nothing was changed).')
  try:
    tar = tarfile.open(archive, mode='r:gz')
  except FileNotFoundError:
    raise RunArchiveError(f'No such run archive: {archive}') from None
  except (tarfile.TarError, OSError) as e:
    raise RunArchiveError(f'{archive} is not a run archive ({e}).') from None
  with tar:
    try:
      members = tar.getmembers()
      info_member = tar.extractfile(INFO_FILE)
      info = json.loads(info_member.read()) if info_member else None
    except (KeyError, tarfile.TarError, OSError, ValueError, EOFError) as e:
      raise RunArchiveError(f'{archive} is not a run archive made by '
                            f'run_archive.pack ({e!r}).') from None
    if not isinstance(info, dict) or 'step' not in info:
      raise RunArchiveError(f'{archive}: {INFO_FILE} is not a run summary.')
    for member in members:
      _check_member(member)
    workdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=workdir.name + '.',
                                        dir=workdir.parent))
    # Python's own extraction filter too, where it exists (3.11.4+).
    safe = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}
    try:
      for member in members:
        if member.name != INFO_FILE:
          tar.extract(member, tmp, set_attrs=False, **safe)
      if not (tmp / train_config.FLAGS_FILE).is_file():
        raise RunArchiveError(f'{archive} holds no {train_config.FLAGS_FILE}.')
      found = _latest_step_dir(tmp)
      if int(found.name) != int(info['step']):
        raise RunArchiveError(f'{archive}: checkpoint step {found.name} is '
                              f'not the step {info["step"]} it lists.')
      tmp.rename(workdir)
    except BaseException as e:
      shutil.rmtree(tmp, ignore_errors=True)
      if isinstance(e, (tarfile.TarError, EOFError, OSError)):
        raise RunArchiveError(f'{archive} is damaged ({e!r}); nothing was '
                              'written.') from None
      raise
  return info
