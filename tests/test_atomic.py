"""Tests for vdsr_jax.atomic."""

import os

import pytest

from vdsr_jax import atomic


def _listing(folder):
  return sorted(p.name for p in folder.iterdir())


def test_writes_text_and_bytes_with_the_usual_mode(tmp_path):
  atomic.write_text(tmp_path / 'sub' / 'a.txt', 'héllo\n')
  assert (tmp_path / 'sub' / 'a.txt').read_text(encoding='utf-8') == 'héllo\n'
  with atomic.write(tmp_path / 'b.bin') as f:
    f.write(b'\x00\x01')
  assert (tmp_path / 'b.bin').read_bytes() == b'\x00\x01'
  (tmp_path / 'plain').write_bytes(b'')  # what open() gives a new file
  mode = lambda name: os.stat(tmp_path / name).st_mode & 0o777
  assert mode('b.bin') == mode('plain')
  assert _listing(tmp_path) == ['b.bin', 'plain', 'sub']


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
  target = tmp_path / 'metrics.jsonl'
  target.write_text('old\n')
  with pytest.raises(RuntimeError, match='disk full'):
    with atomic.write(target, 'w') as f:
      f.write('new, half')
      raise RuntimeError('disk full')
  assert target.read_text() == 'old\n'
  assert _listing(tmp_path) == ['metrics.jsonl']
  with pytest.raises(KeyboardInterrupt):  # Ctrl-C while writing
    with atomic.write(tmp_path / 'new.txt', 'w') as f:
      raise KeyboardInterrupt
  assert _listing(tmp_path) == ['metrics.jsonl']


def test_only_write_modes(tmp_path):
  with pytest.raises(ValueError, match="'w' or 'wb'"):
    with atomic.write(tmp_path / 'x', 'a'):
      pass
  assert _listing(tmp_path) == []
