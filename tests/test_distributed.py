"""Two processes with jax.distributed on localhost == one process.

Each process has one CPU device and builds its half of every global batch;
the gradients are all-reduced across processes (CPU collectives: gloo, the
default of jax 0.10's `jax_cpu_collectives_implementation`).
"""

import signal
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
  Exits 75 (time limit) and 143 (SIGTERM) are planned stops, not failures:
  the peer stops at the same step and may exit a moment later.
  """
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    codes = [p.poll() for p in procs]
    if (all(c is not None for c in codes)
        or any(c not in (None, 0, 75, 143) for c in codes)):
      return
    if any('Traceback' in log.read_text() for log in logs):
      return
    time.sleep(0.5)


def _losses(workdir):
  return [r['loss'] for r in reporting.read_metrics(workdir)
          if r['kind'] == 'train']


def _run_two_processes(workdir, logs, meanwhile=None, signal_at=None,
                       process1_overrides=None, **overrides):
  """run_tiny in 2 processes (jax.distributed) sharing `workdir`.

  `meanwhile()` runs in this process while they train; process 1 alone gets
  `signal_at` (see run_tiny_in_subprocess) and `process1_overrides`.
  Returns (exit codes, report of their logs).
  """
  port = _free_port()
  procs = [
      run_tiny_in_subprocess(
          workdir, logs[i], env={'XLA_FLAGS': ''},
          signal_at=signal_at if i == 1 else None,
          coordinator_address=f'localhost:{port}', num_processes=2,
          process_id=i, **overrides,
          **((process1_overrides or {}) if i == 1 else {}))
      for i in range(2)]
  try:
    if meanwhile is not None:
      meanwhile()
    _wait_all(procs, logs, timeout=300)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  report = '\n'.join(
      f'--- process {i} (exit {p.returncode}):\n{log.read_text()[-2500:]}'
      for i, (p, log) in enumerate(zip(procs, logs)))
  return [p.returncode for p in procs], report


def _assert_matches_single(workdir, single_workdir, single_params):
  np.testing.assert_allclose(_losses(workdir), _losses(single_workdir),
                             rtol=1e-6)
  params = weights.load_npz(workdir / 'params.npz')
  for layer, d in single_params.items():
    for name, value in d.items():
      np.testing.assert_allclose(params[layer][name], value, rtol=1e-5,
                                 atol=1e-7, err_msg=f'{layer}/{name}')
  return params


def test_two_processes_match_one_process(tmp_path):
  multi = tmp_path / 'multi'
  logs = [tmp_path / f'process{i}.log' for i in range(2)]
  single = {}
  codes, report = _run_two_processes(
      multi, logs, total_steps=3,
      meanwhile=lambda: single.update(
          run_tiny(tmp_path / 'single', total_steps=3)))
  assert codes == [0, 0], report
  assert report.count('STEP 3') == 2, report

  params = _assert_matches_single(multi, tmp_path / 'single',
                                  single['params'])
  # The checkpoint written by the two processes restores like any other.
  restored = weights.load_params(multi)
  np.testing.assert_array_equal(restored['conv0']['kernel'],
                                params['conv0']['kernel'])


def test_sigterm_to_one_process_stops_both_at_one_step(tmp_path):
  """A preemption notice reaching one host: all save at one step, resume."""
  workdir = tmp_path / 'multi'
  logs = [tmp_path / f'process{i}.log' for i in range(2)]
  common = dict(total_steps=8, log_every=2)

  # Process 1 alone gets SIGTERM while reading batch 2 (during step 3): both
  # stop after step 4, the next log step, and save that checkpoint together.
  codes, report = _run_two_processes(
      workdir, logs, signal_at=(2, signal.SIGTERM), **common)
  assert codes == [143, 143], report
  assert report.count('Interrupted at step 4: checkpoint saved') == 2, report
  assert [r['step'] for r in reporting.read_metrics(workdir)
          if r['kind'] == 'train'] == [2, 4]

  codes, report = _run_two_processes(workdir, logs, **common)
  assert codes == [0, 0], report
  single = run_tiny(tmp_path / 'single', **common)
  _assert_matches_single(workdir, tmp_path / 'single', single['params'])


def test_time_limit_of_one_process_stops_both_at_one_step(tmp_path):
  """One host out of time (e.g. a later start): all save at one step."""
  workdir = tmp_path / 'multi'
  logs = [tmp_path / f'process{i}.log' for i in range(2)]
  common = dict(total_steps=8, log_every=2)

  # Only process 1 has a limit, passed at once: both stop at the first log
  # step, 2, save it together and exit with the "run again" status.
  codes, report = _run_two_processes(
      workdir, logs, process1_overrides=dict(time_limit=1e-6), **common)
  assert codes == [75, 75], report
  assert 'Time limit of 1e-06 s reached at step 2 of 8' in report, report
  assert ('Time limit of another process reached at step 2 of 8'
          in report), report
  assert [r['step'] for r in reporting.read_metrics(workdir)
          if r['kind'] == 'train'] == [2]

  codes, report = _run_two_processes(workdir, logs, **common)
  assert codes == [0, 0], report
  single = run_tiny(tmp_path / 'single', **common)
  _assert_matches_single(workdir, tmp_path / 'single', single['params'])
