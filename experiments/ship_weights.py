r"""Ships a finished training run's weights as the package's pretrained model.

  python experiments/ship_weights.py \
      --params=/path/to/workdir/params.npz \
      --run=experiments/results/vdsr_port_aug_48k \
      --recipe="experiments/configs/vdsr_pytorch_port_aug_48k.flags (...)" \
      --hardware="steps 0-39,247 one NVIDIA H200; ..." \
      --note="Below the paper in every cell ..."

Writes `vdsr_jax/pretrained/vdsr_291.npz` (the weights) and its record
`vdsr_291.json` beside it. Everything the record says that the run's folder
knows is read from it, not typed: the checksum, the step count and batch size
(`flags.txt`, `metrics.jsonl`), its sessions (steps, platform, commit, hours,
and the device model where recorded), and the PSNR/SSIM of its evaluation
(`eval.json`, written by
`evaluate.py --method=vdsr --weights=<params> --json_out=<run>/eval.json`).
Only the prose (recipe, hardware by name, note) comes from flags.

Before writing anything it checks that the run finished (its last step is
`--total_steps`), that `eval.json` scores every benchmark at every trained
scale, and that it belongs to these weights: `--verify_datasets` are scored
again and must agree with `eval.json` within `--tolerance_db`. Any failure is
one error and leaves the shipped files as they were.
"""

import hashlib
import json
import pathlib
import sys
import tempfile
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence

from absl import app
from absl import flags

try:
  import vdsr_jax  # pylint: disable=unused-import
except ImportError:  # Running from a checkout without `pip install -e .`.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from vdsr_jax import atomic  # pylint: disable=g-import-not-at-top
from vdsr_jax import evaluation
from vdsr_jax import reporting
from vdsr_jax import train_config
from vdsr_jax import weights as weights_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
EVAL_FILE = 'eval.json'
COMMIT_NOTES_FILE = 'TRAINED_FROM_COMMIT'

_PARAMS = flags.DEFINE_string(
    'params', None, "The run's final weights: the params.npz train.py "
    'exports, or its workdir / an orbax checkpoint.')
_RUN = flags.DEFINE_string(
    'run', None, "The run's folder in the repository (experiments/results/"
    '<name>): flags.txt, metrics.jsonl and eval.json.')
_RECIPE = flags.DEFINE_string('recipe', None,
                              'The flagfile and, in words, what it trains.')
_HARDWARE = flags.DEFINE_string(
    'hardware', None, 'The machines by name, in words (the record also lists '
    'each session\'s steps, platform and hours from metrics.jsonl).')
_NOTE = flags.DEFINE_string('note', None,
                            'How the scores compare (paper, earlier weights).')
_OUT = flags.DEFINE_string(
    'out', str(weights_lib.PRETRAINED_PATH),
    'The .npz to write; the record goes beside it with a .json suffix.')
_VERIFY = flags.DEFINE_list(
    'verify_datasets', ['set5'],
    'Benchmarks scored again to check that eval.json is these weights\'.')
_TOLERANCE = flags.DEFINE_float(
    'tolerance_db', 0.005, 'Largest PSNR difference (dB) per cell allowed '
    'between the re-scored datasets and eval.json. Machines differ by up to '
    '~0.003 dB (a GPU\'s TF32 against this CPU); the shipped run\'s '
    'checkpoint 500 steps before its end differs by 0.017 dB on Set5 x2.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                train_config.DATA_DIR_HELP)
_TFDS_DIR = flags.DEFINE_string('tfds_dir', None,
                                train_config.TFDS_DIR_HELP)


class ShipError(ValueError):
  """The run cannot be shipped as it is (unfinished, unscored, mismatched)."""


def _relative(path: pathlib.Path) -> str:
  """`path` relative to the repository if inside it, else as given."""
  try:
    return str(path.resolve().relative_to(REPO_ROOT))
  except ValueError:
    return str(path)


class RunFolder(NamedTuple):
  """What a run's results folder holds, read once."""
  path: pathlib.Path
  config: train_config.TrainConfig  # flags.txt
  records: List[Dict[str, Any]]  # metrics.jsonl
  scores: Dict[str, Any]  # eval.json


def read_run(run: pathlib.Path) -> RunFolder:
  """Reads and checks a run folder; ShipError if something is missing."""
  needed = (train_config.FLAGS_FILE, reporting.METRICS_FILE, EVAL_FILE)
  missing = [n for n in needed if not (run / n).is_file()]
  if missing:
    raise ShipError(
        f'{run} lacks {", ".join(missing)}; a run folder needs flags.txt and '
        'metrics.jsonl (copied from the workdir) and eval.json (evaluate.py '
        '--method=vdsr --weights=<params> --json_out=<run>/eval.json).')
  try:
    config = train_config.config_from_flags_file(
        (run / train_config.FLAGS_FILE).read_text())
  except train_config.ConfigError as e:
    raise ShipError(f'{run / train_config.FLAGS_FILE}: {e}') from None
  records = reporting.read_metrics(run / reporting.METRICS_FILE)
  try:
    scores = json.loads((run / EVAL_FILE).read_text())
  except json.JSONDecodeError as e:
    raise ShipError(f'{run / EVAL_FILE} is not JSON ({e}).') from None
  if not isinstance(scores, dict) or not all(
      isinstance(cells, dict) for cells in scores.values()):
    raise ShipError(f'{run / EVAL_FILE} is not what evaluate.py --json_out '
                    'writes ({"set5": {"2": {"psnr": ..., "ssim": ...}}}).')
  return RunFolder(run, config, records, scores)


def _commit(session: Mapping[str, Any]) -> str:
  """A session record's commit, short, marked if the tree was dirty."""
  commit = str(session.get('git_commit') or 'unknown')[:7]
  if session.get('git_dirty'):
    commit += ' (uncommitted changes)'
  return commit


def _sessions(records: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
  """Where each session trained: its steps, machine, commit and hours.

  `hours` runs from the session's start (after loading the data) to its
  last logged step; None where the records carry no times.
  """
  sessions, start = [], None
  for r in records:
    if r.get('kind') == 'session':
      start = r.get('time')
      sessions.append({'steps': [int(r['step'])] * 2,
                       'platform': r.get('platform'),
                       'device_kind': r.get('device_kind'),
                       'commit': _commit(r), 'hours': None})
    elif r.get('kind') == 'train' and sessions:
      sessions[-1]['steps'][1] = int(r['step'])
      if start is not None and r.get('time') is not None:
        sessions[-1]['hours'] = round((r['time'] - start) / 3600, 2)
  return sessions


def _commits(sessions: Sequence[Mapping[str, Any]]) -> str:
  """The sessions' commits, in order, each once, and how many sessions."""
  seen = dict.fromkeys(s['commit'] for s in sessions)
  return f'{", ".join(seen)} ({len(sessions)} sessions)'


def build_record(npz_bytes: bytes, folder: RunFolder, *, file_name: str,
                 recipe: str, hardware: str, note: str) -> Dict[str, Any]:
  """The JSON record of shipped weights, derived from their run's folder.

  Args:
    npz_bytes: the shipped file's contents (its sha256 goes in the record).
    folder: the run's folder as `read_run` gives it.
    file_name: the shipped file's name.
    recipe, hardware, note: prose the folder cannot tell.

  Returns:
    The record, as `vdsr_jax/pretrained/vdsr_291.json` holds it.

  Raises:
    ShipError: the run is unfinished or its evaluation is incomplete.
  """
  run, config, records, scores = folder
  total = config.total_steps
  steps = [int(r['step']) for r in records if r.get('kind') == 'train']
  if not steps or max(steps) != total:
    raise ShipError(
        f'{run}: the run is not finished: its metrics end at step '
        f'{max(steps) if steps else 0} of --total_steps={total}.')
  scales = list(config.scales)
  def scored(cell):
    return isinstance(cell, dict) and {'psnr', 'ssim'} <= set(cell)
  missing = [f'{d} x{s}' for d in evaluation.BENCHMARKS for s in scales
             if not scored(scores.get(d, {}).get(str(s)))]
  if missing:
    raise ShipError(f'{run / EVAL_FILE} lacks {", ".join(missing)}; score '
                    'every benchmark at every trained scale.')
  cells = [(d, str(s)) for d in evaluation.BENCHMARKS for s in scales]
  psnr_mean = sum(scores[d][s]['psnr'] for d, s in cells) / len(cells)
  sessions = _sessions(records)
  commits = _commits(sessions)
  if (run / COMMIT_NOTES_FILE).is_file():
    commits += f'; see {_relative(run / COMMIT_NOTES_FILE)}'
  return {
      'file': file_name,
      'file_sha256': hashlib.sha256(npz_bytes).hexdigest(),
      'run': _relative(run),
      'recipe': recipe,
      'steps': total,
      'batch_size': config.batch_size,
      'trained_from_commit': commits,
      'hardware': hardware,
      'sessions': sessions,
      'scales': scales,
      'evaluation': _relative(run / EVAL_FILE),
      'psnr': {d: {str(s): round(scores[d][str(s)]['psnr'], 3)
                   for s in scales} for d in evaluation.BENCHMARKS},
      'ssim': {d: {str(s): round(scores[d][str(s)]['ssim'], 4)
                   for s in scales} for d in evaluation.BENCHMARKS},
      'psnr_mean': round(psnr_mean, 3),
      'note': note,
  }


def verify_scores(params: Any, scores: Mapping[str, Any],
                  datasets: Sequence[str], tolerance_db: float,
                  data_dir: Optional[str] = None,
                  tfds_dir: Optional[str] = None) -> float:
  """Re-scores `datasets` with `params`; ShipError if eval.json disagrees.

  Returns the largest PSNR difference found (dB).
  """
  largest = 0.0
  for name in datasets:
    if name not in scores:
      raise ShipError(f'eval.json has no {name} to verify against.')
    scales = [int(s) for s in scores[name]]
    again = evaluation.evaluate('vdsr', params, [name], scales,
                                data_dir=data_dir, tfds_dir=tfds_dir,
                                progress=False)[name]
    for s, cell in again.items():
      diff = cell['psnr'] - scores[name][s]['psnr']
      largest = max(largest, abs(diff))
      if abs(diff) > tolerance_db:
        raise ShipError(
            f'eval.json does not belong to these weights: {name} x{s} scores '
            f'{cell["psnr"]:.4f} dB now, eval.json says '
            f'{scores[name][s]["psnr"]:.4f} (allowed difference '
            f'{tolerance_db} dB). Evaluate the weights being shipped.')
  return largest


def _load(path: pathlib.Path):
  """(params, bytes to ship) of train.py's output: its .npz, or a checkpoint."""
  if not (path.is_dir() or path.suffix.lower() == '.npz'):
    raise ShipError(f'--params must be what train.py wrote (its params.npz, '
                    f'or its workdir / an orbax checkpoint), got {path}.')
  params = weights_lib.load_params(path)  # verifies an .npz's checksum
  if path.is_file():
    return params, path.read_bytes()
  with tempfile.TemporaryDirectory() as tmp:
    export = pathlib.Path(tmp) / 'params.npz'
    weights_lib.save_npz(params, export)
    return params, export.read_bytes()


def _fail(message: str) -> None:
  print(f'ship_weights.py: error: {message}', file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}')
  for flag in (_PARAMS, _RUN, _RECIPE, _HARDWARE, _NOTE):
    if not flag.value:
      _fail(f'--{flag.name} is required.')
  if not _VERIFY.value:
    _fail('--verify_datasets must name at least one benchmark: the check '
          'that eval.json scores these weights is not optional.')
  out = pathlib.Path(_OUT.value)
  if out.suffix != '.npz':
    _fail(f'--out must name a .npz file, got {out}.')
  run = pathlib.Path(_RUN.value)
  try:
    params_path = pathlib.Path(_PARAMS.value)
    params, npz_bytes = _load(params_path)
    folder = read_run(run)
    record = build_record(npz_bytes, folder, file_name=out.name,
                          recipe=_RECIPE.value, hardware=_HARDWARE.value,
                          note=_NOTE.value)
    largest = verify_scores(params, folder.scores, _VERIFY.value,
                            _TOLERANCE.value, _DATA_DIR.value, _TFDS_DIR.value)
  except ValueError as e:  # ShipError, WeightsError, DatasetError.
    _fail(str(e))
  print(f'{", ".join(_VERIFY.value)} re-scored: largest PSNR difference from '
        f'eval.json {largest:.2g} dB.')
  with atomic.write(out) as f:
    f.write(npz_bytes)
  with atomic.write(out.with_suffix('.json'), 'w') as f:
    json.dump(record, f, indent=2)
    f.write('\n')
  print(f'Wrote {out} and {out.with_suffix(".json")}: {record["steps"]} '
        f'steps, mean PSNR {record["psnr_mean"]:.3f} dB over '
        f'{4 * len(record["scales"])} cells.')


if __name__ == '__main__':
  app.run(main)
