"""The wheel a user installs: it carries the shipped weights and they load.

The rest of the suite runs against the editable install, where
`vdsr_jax/pretrained/` is read straight from the source tree. Here the package
is built into a wheel and installed elsewhere, as `pip install .` would, so a
package-data rule that stops matching the weights file fails a test instead of
a user's fresh install.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

from vdsr_jax import weights
from vdsr_jax.native import dnnl

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# What setup.cfg reads besides the package itself.
BUILD_FILES = ('setup.cfg', 'pyproject.toml', 'README.md', 'LICENSE')
# Build products and local artifacts a clean clone does not have.
IGNORED = shutil.ignore_patterns('__pycache__', '*.pyc', '*.so', '*.so.*',
                                 '*.egg-info')


def _run_python(*args, **kwargs) -> str:
  """Runs this Python with `args`; it must exit 0. Returns its stdout."""
  result = subprocess.run([sys.executable, *args], capture_output=True,
                          text=True, timeout=300, check=False, **kwargs)
  assert result.returncode == 0, result.stderr
  return result.stdout


def _build_wheel(tmp_path: pathlib.Path) -> pathlib.Path:
  src = tmp_path / 'src'
  shutil.copytree(REPO_ROOT / 'vdsr_jax', src / 'vdsr_jax', ignore=IGNORED)
  for name in BUILD_FILES:
    shutil.copy2(REPO_ROOT / name, src / name)
  out = tmp_path / 'wheels'
  # No build isolation: setuptools comes from requirements-dev.txt, so the
  # build needs no index.
  _run_python('-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
              '-w', str(out), str(src))
  (wheel,) = out.glob('vdsr_jax-*.whl')
  return wheel


def test_wheel_ships_the_weights_and_they_load(tmp_path):
  wheel = _build_wheel(tmp_path)
  with zipfile.ZipFile(wheel) as zf:
    shipped = zf.read('vdsr_jax/pretrained/vdsr_291.npz')
    card = json.loads(zf.read('vdsr_jax/pretrained/vdsr_291.json'))
    names = zf.namelist()
    (metadata,) = [n for n in names if n.endswith('.dist-info/METADATA')]
    metadata = zf.read(metadata).decode().splitlines()
    (license_file,) = [n for n in names if n.endswith('/licenses/LICENSE')]
    license_text = zf.read(license_file)
  assert shipped == weights.PRETRAINED_PATH.read_bytes()
  assert card == json.loads(
      weights.PRETRAINED_PATH.with_suffix('.json').read_text())
  assert not [n for n in names if n.startswith(('tests/', 'experiments/'))]
  # The native kernels' sources, so `python -m vdsr_jax.native.build` works
  # in the installed copy.
  for source in dnnl.SOURCES:
    assert f'vdsr_jax/native/{source.name}' in names, source.name
  # PEP 639 metadata: an SPDX expression and the license text itself.
  assert 'License-Expression: Apache-2.0' in metadata, metadata
  assert license_text == (REPO_ROOT / 'LICENSE').read_bytes()

  site = tmp_path / 'site'
  _run_python('-m', 'pip', 'install', '-q', '--no-deps', '--target', str(site),
              str(wheel))
  # A fresh process that can only find the installed copy: upscale with the
  # shipped weights (load_npz verifies their checksum).
  script = (
      'import numpy as np, vdsr_jax\n'
      'print(vdsr_jax.__file__)\n'
      'img = np.linspace(0, 1, 24 * 20, dtype=np.float32).reshape(24, 20)\n'
      'out = vdsr_jax.upscale(vdsr_jax.load_pretrained(), img, 3)\n'
      'print(*out.shape, sep="x")\n')
  env = dict(os.environ, PYTHONPATH=str(site))
  where, shape = _run_python('-c', script, cwd=tmp_path, env=env).split()
  assert pathlib.Path(where).is_relative_to(site), where
  assert shape == '72x60'  # 3 x (24, 20)
