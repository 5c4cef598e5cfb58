"""Shared pytest fixtures."""

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def datasets_dir() -> pathlib.Path:
  """The shared source images: $VDSR_DATA_DIR or <repo>/../shared/datasets."""
  path = pathlib.Path(
      os.environ.get('VDSR_DATA_DIR')
      or REPO_ROOT.parent / 'shared' / 'datasets'
  )
  if not (path / 'Set5').is_dir():
    # The data is part of this project's environment: its absence is a
    # failure to report, not a reason to skip.
    pytest.fail(f'no source images at {path}: set VDSR_DATA_DIR to the '
                'folder holding Set5/, Set14/, B100/, Urban100/, train291/.')
  return path


@pytest.fixture(scope='session')
def reference_dir(datasets_dir) -> pathlib.Path:
  """The shared reference files (paper table, authors' weights)."""
  return datasets_dir.parent / 'reference'
