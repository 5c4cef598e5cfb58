"""The notebooks in notebooks/ run from top to bottom and are stored clean.

Each notebook is executed with nbclient in a kernel of the Python running the
tests (a kernelspec written to a temporary folder, so whatever `python3`
kernel is installed elsewhere plays no part), from the notebooks/ folder as
Jupyter would, with the notebooks' small settings (VDSR_NOTEBOOK_SMALL=1).
A cell that raises fails the test with the cell's traceback.
"""

import json
import os
import pathlib
import sys
import time

import nbclient
import nbformat
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / 'notebooks'
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob('*.ipynb'))
KERNEL_NAME = 'vdsr-jax-tests'
# Per cell. The small settings need well under a minute for most cells and
# about two minutes for the longest training cell on 2 idle CPU cores; this
# leaves room for a loaded machine.
CELL_TIMEOUT_S = 1200


def test_notebooks_exist():
  names = [p.name for p in NOTEBOOKS]
  assert names == ['01_upscale_quickstart.ipynb', '02_train_vdsr.ipynb',
                   '03_residual_vs_plain.ipynb']


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == 'code':
      assert cell.outputs == [], f'{path.name}: cell {i} has outputs.'
      assert cell.execution_count is None, (
          f'{path.name}: cell {i} has an execution count.')
    assert 'attachments' not in cell or not cell.attachments, (
        f'{path.name}: cell {i} has attachments.')


@pytest.fixture(scope='module')
def kernel_env(tmp_path_factory, datasets_dir):
  """Environment for the kernels: a private kernelspec, small settings."""
  jupyter_dir = tmp_path_factory.mktemp('jupyter')
  spec_dir = jupyter_dir / 'kernels' / KERNEL_NAME
  spec_dir.mkdir(parents=True)
  (spec_dir / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f',
               '{connection_file}'],
      'display_name': 'vdsr_jax tests',
      'language': 'python',
  }))
  env = {
      'JUPYTER_PATH': str(jupyter_dir),
      'VDSR_NOTEBOOK_SMALL': '1',
      'VDSR_DATA_DIR': str(datasets_dir),
      # Figures are still rendered (into the discarded outputs) inline.
      'MPLBACKEND': 'module://matplotlib_inline.backend_inline',
      # The notebooks' tempfile.mkdtemp() folders (training workdir, TFDS
      # data) land here and are removed with pytest's other tmp folders.
      'TMPDIR': str(tmp_path_factory.mktemp('kernel_tmp')),
  }
  if not os.environ.get('TFDS_DATA_DIR'):
    env['TFDS_DATA_DIR'] = str(tmp_path_factory.mktemp('tfds'))
  return env


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, kernel_env, monkeypatch):
  for name, value in kernel_env.items():
    monkeypatch.setenv(name, value)
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      nb, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT_S,
      resources={'metadata': {'path': str(NOTEBOOK_DIR)}})
  start = time.time()
  client.execute()  # raises CellExecutionError naming the failing cell
  elapsed = time.time() - start
  load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
  print(f'{path.name}: {elapsed:.0f} s (load average {load:.1f})')
  errors = [o for c in nb.cells if c.cell_type == 'code'
            for o in c.outputs if o.output_type == 'error']
  assert not errors
  figures = sum('image/png' in o.get('data', {}) for c in nb.cells
                if c.cell_type == 'code' for o in c.outputs)
  assert figures > 0, f'{path.name} showed no figure.'
