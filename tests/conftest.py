"""Shared pytest fixtures."""

import os
import pathlib
import subprocess
import sys

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


@pytest.fixture
def run_script():
  """Runs experiments/<name> as a user would, returning the CompletedProcess.

  This Python, from the repository root, without PYTHONPATH: the script must
  find vdsr_jax itself. `env` entries are added to the environment.
  """
  def run(name, args, env=None, timeout=300):
    full_env = dict(os.environ, **(env or {}))
    full_env.pop('PYTHONPATH', None)
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / 'experiments' / name), *args],
        cwd=REPO_ROOT, env=full_env, capture_output=True, text=True,
        timeout=timeout, check=False)
  return run


@pytest.fixture
def tiny_params():
  """Makes small random VDSR parameters, as numpy: tiny_params(seed, depth,
  features). For tests of code that handles weights (saving, loading,
  averaging, statistics), where a 20 x 64 model would only cost time."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vdsr_jax import models  # pylint: disable=g-import-not-at-top

  def make(seed=0, depth=3, features=4):
    return jax.tree.map(np.asarray, models.init_params(
        jax.random.PRNGKey(seed), models.VDSR(depth=depth, features=features),
        9))
  return make
