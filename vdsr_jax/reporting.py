"""What a user watches during and after training.

* `workdir/metrics.jsonl`: one JSON object per line. Training records:
  {"kind": "train", "step", "loss", "grad_norm", "lr", "steps_per_sec",
  "time"} where loss and grad_norm are means over the steps since the
  previous record, lr is the rate of the last of them and `step` counts
  finished updates. Evaluation records: {"kind": "eval", "step", "time",
  "results": {"set5": {"2": {"psnr", "ssim"}, ...}}, "psnr": {"set5/x2": ...}}.
  Each start or resume adds {"kind": "session", "step", "time", "git_commit",
  "git_dirty", "conv", "platform", "device_kind", "devices", "processes",
  "cpu_model", "cpu_simd", "cpu_count"}: which code and hardware trained each
  stretch of a run that spans several sessions (plus "named_commit" where $VDSR_GIT_COMMIT disagrees with git; see
  `git_state`).
* `workdir/tensorboard/`: the same scalars as TensorBoard events (written
  with tensorboardX; TensorFlow is not needed).
* `workdir/curves.png`: loss and PSNR against step (`plot_curves`).
* `summary_table`: a text table of the evaluations; `phase_table`: the
  training loss at the start and end of each learning-rate phase.

On resume, records after the resumed step (logged after the checkpoint by an
interrupted run) are dropped so the file describes one consistent run.
"""

import json
import math
import os
import pathlib
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional

from vdsr_jax import atomic

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'
CURVES_FILE = 'curves.png'


def _clean(value: Any) -> Any:
  """JSON-safe value: floats as float (non-finite -> None), nested dicts."""
  if isinstance(value, Mapping):
    return {str(k): _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  if isinstance(value, (bool, str)) or value is None:
    return value
  if isinstance(value, int):
    return value
  value = float(value)
  return value if math.isfinite(value) else None


def read_metrics(path) -> List[Dict[str, Any]]:
  """The records of a metrics.jsonl file (a workdir or the file itself)."""
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / METRICS_FILE
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    line = line.strip()
    if line:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue  # a line cut short by a crash
  return records


def flat_psnr(results: Mapping[str, Mapping[str, Mapping[str, float]]]
              ) -> Dict[str, float]:
  """{'set5': {'2': {'psnr': p}}} -> {'set5/x2': p}."""
  return {f'{name}/x{s}': r['psnr'] for name, by_scale in results.items()
          for s, r in by_scale.items()}


def named_paths(items, flag: str, key: str = 'NAME') -> Dict[str, str]:
  """['name=path', ...] (a list flag's value) -> {name: path}, in order.

  For the scripts that compare several named weights or results side by
  side. Raises one ValueError, naming `--flag`, for an item that is not
  `key`=PATH or a name given twice (which would overwrite a column).
  """
  out = {}
  for item in items:
    name, sep, path = item.partition('=')
    if not sep or not name or not path:
      raise ValueError(f'--{flag} takes {key}=PATH pairs, got {item!r}.')
    if name in out:
      raise ValueError(f'--{flag} names {name!r} twice.')
    out[name] = path
  return out


# The SIMD extensions that decide which native kernels a CPU runs
# (vdsr_jax/native: Winograd AVX-512 or AVX2, else oneDNN).
CPU_SIMD_FLAGS = ('avx2', 'fma', 'avx512f', 'avx512_bf16')


def cpu_info(cpuinfo='/proc/cpuinfo') -> Dict[str, Any]:
  """{'cpu_model', 'cpu_simd', 'cpu_count'} of this host.

  The host's CPU feeds the input pipeline on every platform and trains on
  CPU, where its SIMD extensions set the speed (the same "2 vCPUs" machine
  ran the carried run at 0.15 or 0.7 steps/s). `cpu_model` is /proc/cpuinfo's
  first "model name" and `cpu_simd` the CPU_SIMD_FLAGS it lists (None and []
  where that file cannot be read, as outside Linux); `cpu_count` counts the
  cores this process may run on.
  """
  model, flags = None, set()
  try:
    with open(cpuinfo) as f:
      for line in f:
        key, _, value = line.partition(':')
        if key.strip() == 'model name' and model is None:
          model = value.strip()
        elif key.strip() == 'flags' and not flags:
          flags = set(value.split())
  except OSError:
    pass
  try:
    count = len(os.sched_getaffinity(0))
  except AttributeError:  # not on every platform
    count = os.cpu_count()
  return {'cpu_model': model,
          'cpu_simd': [f for f in CPU_SIMD_FLAGS if f in flags],
          'cpu_count': count}


def git_state(path=None) -> Dict[str, Any]:
  """{'git_commit': sha or None, 'git_dirty': bool or None} of `path`'s repo.

  `path` defaults to this package's folder (the code that trains). Outside
  a git checkout (an installed package, a copy of the files on another
  machine) or without git, the commit is $VDSR_GIT_COMMIT if set (whoever
  made the copy names it; whether it was modified is then unknown), else
  None. Inside a checkout git answers; if $VDSR_GIT_COMMIT names another
  commit, it is kept too, as 'named_commit': a copy of the files can come
  with git metadata older than the files themselves, and the record should
  show that the two disagree rather than pick one.
  """
  named = os.environ.get('VDSR_GIT_COMMIT') or None
  path = pathlib.Path(path or __file__).resolve()
  cwd = path if path.is_dir() else path.parent
  try:
    sha = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=cwd, check=True,
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                           cwd=cwd, check=True, capture_output=True,
                           text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return {'git_commit': named, 'git_dirty': None}
  state = {'git_commit': sha, 'git_dirty': bool(dirty)}
  if named and named != sha:
    state['named_commit'] = named
  return state


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch.

  tensorboardX imports torch when it is installed (seconds of start-up) only
  to accept torch tensors; we log Python floats, so torch is hidden from that
  import (tensorboardX handles the ImportError).
  """
  hide = 'torch' not in sys.modules
  if hide:
    sys.modules['torch'] = None  # makes `import torch` raise ImportError
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  finally:
    if hide:
      del sys.modules['torch']
  return tensorboardX.SummaryWriter


class Reporter:
  """Writes metrics.jsonl and TensorBoard events for one (process 0) run."""

  def __init__(self, workdir, *, start_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / METRICS_FILE
    self._tb = None
    if not enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    kept = [r for r in read_metrics(self.path)
            if r.get('step', 0) <= start_step]
    # Atomically: a crash here must not lose the run's history.
    with atomic.write(self.path, 'w') as f:
      for r in kept:
        f.write(json.dumps(r) + '\n')
    writer = _summary_writer_class()
    self._tb = writer(logdir=str(self.workdir / TENSORBOARD_DIR),
                      purge_step=start_step + 1 if start_step else None)

  def _append(self, record: Dict[str, Any]) -> None:
    with open(self.path, 'a') as f:
      f.write(json.dumps(_clean(record)) + '\n')

  def write_train(self, step: int, scalars: Mapping[str, float]) -> None:
    """Logs one training record (loss, grad_norm, lr, steps_per_sec, ...)."""
    if not self.enabled:
      return
    self._append({'kind': 'train', 'step': int(step), **scalars,
                  'time': time.time()})
    for name, value in scalars.items():
      self._tb.add_scalar(f'train/{name}', float(value), int(step))
    self._tb.flush()

  def write_session(self, step: int, info: Mapping[str, Any]) -> None:
    """Logs the start (step 0) or resumption of training at `step`."""
    if not self.enabled:
      return
    self._append({'kind': 'session', 'step': int(step), 'time': time.time(),
                  **git_state(), **info})

  def write_eval(self, step: int, results: Mapping[str, Any]) -> None:
    """Logs evaluation results {dataset: {scale: {'psnr', 'ssim'}}}."""
    if not self.enabled:
      return
    psnr = flat_psnr(results)
    self._append({'kind': 'eval', 'step': int(step), 'time': time.time(),
                  'results': results, 'psnr': psnr})
    for name, by_scale in results.items():
      for s, r in by_scale.items():
        for metric, value in r.items():
          self._tb.add_scalar(f'eval/{name}_x{s}/{metric}', float(value),
                              int(step))
    self._tb.flush()

  def close(self) -> None:
    """Flushes and closes the metrics file and the TensorBoard writer."""
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def plot_curves(records: List[Dict[str, Any]], path,
                paper: Optional[Mapping[str, float]] = None) -> None:
  """Saves loss and evaluation PSNR against step as a PNG.

  Args:
    records: from `read_metrics`.
    path: the PNG to write.
    paper: optional {'set5/x2': psnr, ...} drawn as dashed reference lines.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  train = [r for r in records if r.get('kind') == 'train'
           and r.get('loss') is not None]
  evals = [r for r in records if r.get('kind') == 'eval']
  keys = sorted({k for r in evals for k in r.get('psnr', {})})
  # A run with no evaluation yet gets the loss panel alone (an empty PSNR
  # panel beside it would read as a plotting failure).
  if keys:
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(11, 4))
  else:
    fig, ax_loss = plt.subplots(1, 1, figsize=(5.5, 4))
  if train:
    ax_loss.plot([r['step'] for r in train], [r['loss'] for r in train])
    if all(r['loss'] > 0 for r in train):
      ax_loss.set_yscale('log')
  ax_loss.set_xlabel('step')
  ax_loss.set_ylabel('training loss (MSE)')
  ax_loss.grid(True, alpha=0.3)
  if keys:
    for i, key in enumerate(keys):
      points = [(r['step'], r['psnr'][key]) for r in evals
                if key in r['psnr']]
      color = f'C{i}'
      ax_psnr.plot(*zip(*points), marker='o', color=color, label=key)
      if paper and key in paper:
        ax_psnr.axhline(paper[key], color=color, linestyle='--', alpha=0.6)
    ax_psnr.set_xlabel('step')
    ax_psnr.set_ylabel('PSNR (dB)' + (' (dashed: paper)' if paper else ''))
    ax_psnr.grid(True, alpha=0.3)
    ax_psnr.legend()
  fig.tight_layout()
  with atomic.write(path) as f:
    fig.savefig(f, format='png', dpi=100)
  plt.close(fig)


def summary_table(records: List[Dict[str, Any]],
                  paper: Optional[Mapping[str, float]] = None) -> str:
  """Text table: one row per evaluation (step, training loss, PSNR each)."""
  train = [r for r in records if r.get('kind') == 'train']
  evals = [r for r in records if r.get('kind') == 'eval']
  keys = sorted({k for r in evals for k in r.get('psnr', {})})
  header = f'{"step":>8} {"loss":>10}' + ''.join(f' {k:>10}' for k in keys)
  lines = [header, '-' * len(header)]
  for r in evals:
    before = [t for t in train if t['step'] <= r['step']]
    loss = before[-1].get('loss') if before else None
    line = f'{r["step"]:>8} ' + (f'{loss:>10.3e}' if loss is not None
                                  else f'{"-":>10}')
    for k in keys:
      v = r['psnr'].get(k)
      line += f' {v:>10.3f}' if v is not None else f' {"-":>10}'
    lines.append(line)
  if not evals and train:
    last = train[-1]
    loss = last.get('loss')
    lines.append(f'{last["step"]:>8} ' + (f'{loss:>10.3e}' if loss is not None
                                           else f'{"-":>10}'))
  if paper and keys:
    lines.append(f'{"paper":>8} {"":>10}' + ''.join(
        f' {paper[k]:>10.2f}' if k in paper else f' {"-":>10}' for k in keys))
  return '\n'.join(lines)


def _same_lr(a: Optional[float], b: Optional[float]) -> bool:
  """Whether two records' learning rates are one phase's (float32 values,
  e.g. 0.010000000707805157 and 0.01; records without an lr are one)."""
  if a is None or b is None:
    return a is b
  return math.isclose(a, b, rel_tol=1e-3)


def phase_table(records: List[Dict[str, Any]], window: int = 2000) -> str:
  """Text table: one row per constant-learning-rate stretch of the run.

  Each row gives the stretch's steps, its lr and the mean training loss of
  its first and of its last `window` steps (the train records ending in
  them), so one can see whether a phase was still improving when it ended,
  the question behind cutting or extending a schedule.
  """
  by_step = {}
  for r in records:
    if r.get('kind') == 'train' and r.get('loss') is not None:
      by_step[r['step']] = r  # a repeated step: the later record counts
  train = [by_step[s] for s in sorted(by_step)]
  phases = []  # [lr, first step, [records]]
  prev_step = 0
  for r in train:
    lr = r.get('lr')
    if not phases or not _same_lr(lr, phases[-1][0]):
      phases.append([lr, prev_step, []])
    phases[-1][2].append(r)
    prev_step = r['step']
  header = (f'{"steps":>17} {"lr":>9} {"records":>8} '
            f'{"loss first " + str(window):>17} '
            f'{"loss last " + str(window):>17} {"change":>7}')
  lines = [header, '-' * len(header)]
  for lr, start, rs in phases:
    end = rs[-1]['step']
    first = [r['loss'] for r in rs if r['step'] <= start + window]
    last = [r['loss'] for r in rs if r['step'] > end - window]
    a, b = sum(first) / len(first), sum(last) / len(last)
    lr_text = f'{lr:>9.2g}' if lr is not None else f'{"-":>9}'
    lines.append(f'{f"{start}-{end}":>17} {lr_text} {len(rs):>8} '
                 f'{a:>17.4e} {b:>17.4e} {100 * (b - a) / a:>6.1f}%')
  return '\n'.join(lines)
