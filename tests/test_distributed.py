"""Two processes with jax.distributed on localhost == one process.

Each process has one CPU device and builds its half of every global batch;
the gradients are all-reduced across processes (CPU collectives: gloo, the
default of jax 0.10's `jax_cpu_collectives_implementation`).
"""

import socket
import time

import numpy as np

from vdsr_jax import reporting
from vdsr_jax import weights

from test_train import run_tiny  # pylint: disable=g-bad-import-order
from test_train import run_tiny_in_subprocess


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _wait_all(procs, logs, timeout):
  """Waits for all processes; stops early once one fails.

  A failed process does not exit at once: jax.distributed's shutdown waits
  for its peer, which waits in a collective. Hence the look at the logs.
  """
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    codes = [p.poll() for p in procs]
    if all(c is not None for c in codes) or any(c for c in codes):
      return
    if any('Traceback' in log.read_text() for log in logs):
      return
    time.sleep(0.5)


def _losses(workdir):
  return [r['loss'] for r in reporting.read_metrics(workdir)
          if r['kind'] == 'train']


def test_two_processes_match_one_process(tmp_path):
  port = _free_port()
  multi = tmp_path / 'multi'
  logs = [tmp_path / f'process{i}.log' for i in range(2)]
  procs = [
      run_tiny_in_subprocess(
          multi, logs[i], env={'XLA_FLAGS': ''}, total_steps=3,
          coordinator_address=f'localhost:{port}', num_processes=2,
          process_id=i)
      for i in range(2)]
  try:
    single = run_tiny(tmp_path / 'single', total_steps=3)
    _wait_all(procs, logs, timeout=300)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  outputs = [log.read_text() for log in logs]
  report = '\n'.join(f'--- process {i} (exit {p.returncode}):\n{out[-2500:]}'
                     for i, (p, out) in enumerate(zip(procs, outputs)))
  assert all(p.returncode == 0 for p in procs), report
  assert all('STEP 3' in out for out in outputs), report

  np.testing.assert_allclose(_losses(multi), _losses(tmp_path / 'single'),
                             rtol=1e-6)
  params = weights.load_npz(multi / 'params.npz')
  for layer, d in single['params'].items():
    for name, value in d.items():
      np.testing.assert_allclose(params[layer][name], value, rtol=1e-5,
                                 atol=1e-7, err_msg=f'{layer}/{name}')
  # The checkpoint written by the two processes restores like any other.
  restored = weights.load_params(multi)
  np.testing.assert_array_equal(restored['conv0']['kernel'],
                                params['conv0']['kernel'])
