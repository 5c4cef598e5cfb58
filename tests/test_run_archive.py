"""Tests for vdsr_jax.run_archive and experiments/carry_run.py."""

import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest

from test_train import _assert_same_params
from test_train import _train_records
from test_train import run_tiny
from vdsr_jax import checkpointing
from vdsr_jax import run_archive
from vdsr_jax import train
from vdsr_jax import weights

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _stopped_run(workdir):
  """A tiny run stopped twice by its time limit (a step each time), so it
  holds checkpoints 1 and 2."""
  for _ in range(2):
    with pytest.raises(train.TimeLimitReached):
      run_tiny(workdir, time_limit=1e-6, keep_checkpoints=3)
  assert checkpointing.find_step_dir(workdir).name == '2'


def test_pack_unpack_then_resume_is_exact(tmp_path):
  straight = run_tiny(tmp_path / 'straight')
  _stopped_run(tmp_path / 'here')
  info = run_archive.pack(tmp_path / 'here', tmp_path / 'run.tgz')
  assert info['step'] == 2
  # Only the newest of the two checkpoints travels.
  assert any(f.startswith('checkpoints/2/') for f in info['files'])
  assert not any(f.startswith('checkpoints/1/') for f in info['files'])
  assert {'flags.txt', 'metrics.jsonl'} <= set(info['files'])

  there = tmp_path / 'elsewhere' / 'run'
  assert run_archive.unpack(tmp_path / 'run.tgz', there) == info
  resumed = run_tiny(there)
  assert resumed['step'] == 6
  _assert_same_params(straight['params'], resumed['params'])
  assert ([r['loss'] for r in _train_records(there)] ==
          [r['loss'] for r in _train_records(tmp_path / 'straight')])


def test_the_committed_run_in_progress_unpacks_whole(tmp_path):
  """experiments/results/vdsr_port_aug/run.tgz: the run carried between
  sessions. It unpacks, and its flags, metrics and checkpoint agree with
  the copies committed beside it."""
  results = REPO_ROOT / 'experiments' / 'results' / 'vdsr_port_aug'
  workdir = tmp_path / 'run'
  info = run_archive.unpack(results / 'run.tgz', workdir)
  assert (workdir / 'flags.txt').read_text() == (
      results / 'flags.txt').read_text()
  assert (workdir / 'metrics.jsonl').read_text() == (
      results / 'metrics.jsonl').read_text()
  assert checkpointing.find_step_dir(workdir).name == str(info['step'])
  assert _train_records(workdir)[-1]['step'] == info['step']
  params = checkpointing.restore_params(workdir)
  assert len(params) == 20
  for layer in params.values():  # --notrain_biases
    assert not layer['bias'].any()


def test_unpack_never_overwrites(tmp_path):
  _stopped_run(tmp_path / 'here')
  run_archive.pack(tmp_path / 'here', tmp_path / 'run.tgz')
  before = sorted(p.name for p in (tmp_path / 'here').iterdir())
  with pytest.raises(run_archive.RunArchiveError, match='already exists'):
    run_archive.unpack(tmp_path / 'run.tgz', tmp_path / 'here')
  assert sorted(p.name for p in (tmp_path / 'here').iterdir()) == before


def _archive_with(path, members):
  with tarfile.open(path, 'w:gz') as tar:
    for name, data in members:
      entry = tarfile.TarInfo(name)
      entry.size = len(data)
      tar.addfile(entry, io.BytesIO(data))


@pytest.mark.parametrize('name', ['../escape.txt', '/abs.txt'])
def test_unpack_refuses_members_outside_the_run(tmp_path, name):
  archive = tmp_path / 'evil.tgz'
  _archive_with(archive, [
      (run_archive.INFO_FILE, json.dumps({'step': 1, 'files': []}).encode()),
      (name, b'x')])
  with pytest.raises(run_archive.RunArchiveError, match='refusing'):
    run_archive.unpack(archive, tmp_path / 'out' / 'run')
  assert not (tmp_path / 'escape.txt').exists()
  assert not (tmp_path / 'out').exists() or not any(
      (tmp_path / 'out').iterdir())


def test_unpack_of_a_damaged_or_foreign_archive_writes_nothing(tmp_path):
  _stopped_run(tmp_path / 'here')
  run_archive.pack(tmp_path / 'here', tmp_path / 'run.tgz')
  data = (tmp_path / 'run.tgz').read_bytes()
  (tmp_path / 'cut.tgz').write_bytes(data[:len(data) // 2])
  out = tmp_path / 'out'
  out.mkdir()
  with pytest.raises(run_archive.RunArchiveError,
                     match='damaged|not a run archive'):
    run_archive.unpack(tmp_path / 'cut.tgz', out / 'run')
  assert list(out.iterdir()) == []
  _archive_with(tmp_path / 'other.tgz', [('notes.txt', b'hello')])
  with pytest.raises(run_archive.RunArchiveError,
                     match='not a run archive made by'):
    run_archive.unpack(tmp_path / 'other.tgz', out / 'run')
  with pytest.raises(run_archive.RunArchiveError, match='No such run archive'):
    run_archive.unpack(tmp_path / 'missing.tgz', out / 'run')
  assert list(out.iterdir()) == []


def test_pack_needs_a_workdir_with_a_checkpoint(tmp_path):
  with pytest.raises(run_archive.RunArchiveError, match='not a training'):
    run_archive.pack(tmp_path, tmp_path / 'a.tgz')
  (tmp_path / 'flags.txt').write_text('--depth=3\n')
  with pytest.raises(run_archive.RunArchiveError, match='no checkpoint'):
    run_archive.pack(tmp_path, tmp_path / 'a.tgz')
  assert not (tmp_path / 'a.tgz').exists()


def test_pack_of_a_run_that_changes_meanwhile_keeps_the_old_archive(
    tmp_path, monkeypatch):
  """A checkpoint file deleted mid-pack (a run still training) is one clear
  error, and the archive from before is left as it was."""
  _stopped_run(tmp_path / 'here')
  archive = tmp_path / 'run.tgz'
  archive.write_bytes(b'the previous archive')
  add = tarfile.TarFile.add

  def add_after_a_deletion(self, name, *args, **kwargs):
    if 'checkpoints' in pathlib.Path(name).parts:
      os.unlink(name)
    return add(self, name, *args, **kwargs)

  monkeypatch.setattr(tarfile.TarFile, 'add', add_after_a_deletion)
  with pytest.raises(run_archive.RunArchiveError,
                     match='changed while it was packed.*still training'):
    run_archive.pack(tmp_path / 'here', archive)
  assert archive.read_bytes() == b'the previous archive'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['here', 'run.tgz']


def test_cli(tmp_path, run_script):
  _stopped_run(tmp_path / 'here')
  archive = tmp_path / 'run.tgz'
  result = run_script('carry_run.py', ['--pack', f'--workdir={tmp_path / "here"}',
                                       f'--archive={archive}'])
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout)['step'] == 2
  result = run_script('carry_run.py', ['--unpack', f'--archive={archive}',
                                       f'--workdir={tmp_path / "here"}'])
  assert result.returncode == 1
  assert 'already exists' in result.stderr
  assert 'Traceback' not in result.stderr
  result = run_script('carry_run.py', ['--pack', '--unpack',
                                       f'--archive={archive}',
                                       f'--workdir={tmp_path}'])
  assert result.returncode != 0
  assert 'exactly one of --pack and --unpack' in result.stderr


def _bundle(path: pathlib.Path) -> pathlib.Path:
  """A make_bundle.sh-like folder of synthetic training and Set5 images."""
  from test_train import _write_pngs  # pylint: disable=g-import-not-at-top
  from test_train import synthetic_images  # pylint: disable=g-import-not-at-top
  path.mkdir()
  _write_pngs(path / 'train', synthetic_images())
  _write_pngs(path / 'set5', synthetic_images(n=2, seed=1))
  return path


def _remote_train(bundle, out, workdir, flagfile, *flags):
  """experiments/remote/train.sh as a device call runs it."""
  script = REPO_ROOT / 'experiments' / 'remote' / 'train.sh'
  env = dict(os.environ, BUNDLE=str(bundle), OUT=str(out),
             WORKDIR=str(workdir), PYTHON=sys.executable)
  env.pop('PYTHONPATH', None)
  return subprocess.run(['bash', str(script), str(flagfile), *flags],
                        env=env, capture_output=True, text=True,
                        timeout=600, check=False)


def test_remote_train_script_stops_packs_and_continues(tmp_path):
  """experiments/remote/train.sh: exit 75 with run.tgz, then a fresh
  workdir continues from it to the end."""
  bundle = _bundle(tmp_path / 'bundle')
  (bundle / 'COMMIT').write_text('b' * 40 + '\n')
  flagfile = tmp_path / 'tiny.flags'
  flagfile.write_text('--depth=3\n--features=8\n--patch_size=17\n'
                      '--batch_size=8\n--total_steps=3\n--log_every=1\n'
                      '--checkpoint_every=0\n--eval_every=0\n'
                      '--eval_scales=2\n')

  first = _remote_train(bundle, tmp_path / 'out1', tmp_path / 'w1', flagfile,
                        '--time_limit=0.001s')
  assert first.returncode == 75, first.stderr
  assert sorted(p.name for p in (tmp_path / 'out1').iterdir()) == ['run.tgz']
  (bundle / 'run.tgz').write_bytes((tmp_path / 'out1' / 'run.tgz').read_bytes())
  second = _remote_train(bundle, tmp_path / 'out2', tmp_path / 'w2', flagfile)
  assert second.returncode == 0, second.stderr
  out = tmp_path / 'out2'
  assert sorted(p.name for p in out.iterdir()) == [
      'curves.png', 'params.npz', 'run.tgz']
  run_archive.unpack(out / 'run.tgz', tmp_path / 'finished')
  records = [json.loads(line) for line in
             (tmp_path / 'finished' / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if r['kind'] == 'train'] == [1, 2, 3]
  sessions = [r for r in records if r['kind'] == 'session']
  assert [r['step'] for r in sessions] == [0, 1]
  # The repository's own git answers here, and the bundle's COMMIT, which
  # differs, is kept beside it and reported; on a copy without .git the
  # bundle's COMMIT alone is recorded (test_train covers that fallback).
  assert all(len(r['git_commit']) == 40 and r['git_commit'] != 'b' * 40
             for r in sessions)
  assert all(r['named_commit'] == 'b' * 40 for r in sessions)
  assert 'warning: git names commit' in first.stderr


def test_remote_train_script_forks_at_a_step_in_a_copied_workdir(tmp_path):
  """The device flow of experiments/remote/README.md: one schedule stopped
  at an exact step (its archive kept), a fork of it continued in a copy of
  its workdir with its own flagfile, then, in a later call, the schedule
  itself continued in the workdir it left."""
  bundle = _bundle(tmp_path / 'bundle')
  tiny = ('--depth=3\n--features=8\n--patch_size=17\n--batch_size=8\n'
          '--log_every=1\n--checkpoint_every=1\n--eval_every=0\n'
          '--eval_scales=2\n')
  full = tmp_path / 'full.flags'
  full.write_text(tiny + '--total_steps=8\n--decay_every=4\n')
  fork = tmp_path / 'fork.flags'
  fork.write_text(tiny + '--total_steps=5\n--decay_boundaries=4\n')
  workdir, fork_workdir = tmp_path / 'w', tmp_path / 'w_fork'

  first = _remote_train(bundle, tmp_path / 'full', workdir, full,
                        '--stop_at_step=4')
  assert first.returncode == 75, first.stderr
  assert 'as --stop_at_step asked' in first.stderr
  shutil.copytree(workdir, fork_workdir)  # the README's `cp -a`
  second = _remote_train(bundle, tmp_path / 'fork', fork_workdir, fork,
                         '--allow_config_change')
  assert second.returncode == 0, second.stderr
  # The full schedule's archive holds step 4, to be continued later.
  info = run_archive.unpack(tmp_path / 'full' / 'run.tgz', tmp_path / 'again')
  assert info['step'] == 4
  # Both runs' outputs and the two logs the README's call tees fit in the
  # 8 files a device call returns (2026-11-27: 10 did not, and the full
  # schedule's archive was lost).
  outputs = [p.name for d in ('full', 'fork') for p in (tmp_path / d).iterdir()]
  assert len(outputs) + 2 <= 8, outputs
  run_archive.unpack(tmp_path / 'fork' / 'run.tgz', tmp_path / 'forked')
  records = [json.loads(line) for line in
             (tmp_path / 'forked' / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if r['kind'] == 'train'] == [
      1, 2, 3, 4, 5]
  sessions = [r for r in records if r['kind'] == 'session']
  assert [r['step'] for r in sessions] == [0, 4]
  assert set(sessions[1]['changed_flags']) == {'total_steps', 'decay_every',
                                               'decay_boundaries'}
  assert (tmp_path / 'fork' / 'params.npz').exists()
  # A follow-up call on the same machine goes on with the full schedule
  # from the workdir the fork left alone, and matches the same schedule
  # run straight through.
  third = _remote_train(bundle, tmp_path / 'later', workdir, full)
  assert third.returncode == 0, third.stderr
  run_archive.unpack(tmp_path / 'later' / 'run.tgz', tmp_path / 'resumed')
  records = [json.loads(line) for line in
             (tmp_path / 'resumed' / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if r['kind'] == 'train'] == list(
      range(1, 9))
  assert [r['step'] for r in records if r['kind'] == 'session'] == [0, 4]
  straight = _remote_train(bundle, tmp_path / 'straight', tmp_path / 'w2',
                           full)
  assert straight.returncode == 0, straight.stderr
  _assert_same_params(
      weights.load_npz(tmp_path / 'later' / 'params.npz'),
      weights.load_npz(tmp_path / 'straight' / 'params.npz'))
