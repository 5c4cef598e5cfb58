"""Tests of experiments/ship_weights.py: the shipped record is derived."""

import hashlib
import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest

from vdsr_jax import evaluation
from vdsr_jax import models
from vdsr_jax import weights

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def ship_weights():
  """The script as a module, for its pure functions."""
  path = REPO_ROOT / 'experiments' / 'ship_weights.py'
  spec = importlib.util.spec_from_file_location('ship_weights', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _tiny_params(seed):
  return models.init_params(jax.random.PRNGKey(seed),
                            models.VDSR(depth=3, features=4), 9)


def _session(commit, step=0, dirty=False, time=None, **more):
  return {'kind': 'session', 'step': step, 'git_commit': commit,
          'git_dirty': dirty, 'platform': 'cpu', 'time': time, **more}


def _train(step, time=None):
  return {'kind': 'train', 'step': step, 'loss': 0.1, 'lr': 0.1,
          'time': time}


def _make_run(path, set5_scores, last_step=10):
  """A finished two-session run folder of 10 steps at x2/x3.

  Set5 holds `set5_scores`; the other benchmarks made-up numbers (only
  Set5 is re-scored by these tests).
  """
  path.mkdir(parents=True)
  (path / 'flags.txt').write_text(
      '--total_steps=10\n--batch_size=4\n--scales=2,3\n')
  records = [_session('a' * 40, time=0.0), _train(5, time=1800.0),
             _session('b' * 40, 5, dirty=True),  # crashed before logging
             _session('a' * 40, 5, time=7200.0, device_kind='H9'),
             _train(last_step, time=7200.0 + 36.0)]
  (path / 'metrics.jsonl').write_text(
      ''.join(json.dumps(r) + '\n' for r in records))
  scores = {'set5': set5_scores}
  for i, name in enumerate(evaluation.BENCHMARKS[1:]):
    scores[name] = {s: {'psnr': 20.0 + i, 'ssim': 0.5}
                    for s in ('2', '3')}
  (path / 'eval.json').write_text(json.dumps(scores))
  return path


@pytest.fixture(scope='module')
def scored(datasets_dir, tmp_path_factory):
  """Tiny params, their Set5 x2/x3 scores and the TFDS folder used."""
  tfds_dir = str(tmp_path_factory.mktemp('tfds_ship'))
  params = _tiny_params(0)
  set5 = evaluation.evaluate('vdsr', params, ['set5'], [2, 3],
                             data_dir=str(datasets_dir), tfds_dir=tfds_dir,
                             progress=False)['set5']
  return params, set5, tfds_dir


def _args(params_path, run, out, tfds_dir, datasets_dir):
  return [f'--params={params_path}', f'--run={run}', f'--out={out}',
          '--recipe=tiny.flags', '--hardware=a CPU', '--note=a test',
          f'--tfds_dir={tfds_dir}', f'--data_dir={datasets_dir}']


@pytest.mark.parametrize('source', ['npz', 'workdir'])
def test_ships_the_weights_with_a_derived_record(source, scored, tmp_path,
                                                 datasets_dir, run_script):
  params, set5, tfds_dir = scored
  if source == 'npz':  # train.py's export: shipped byte for byte
    given = tmp_path / 'params.npz'
    weights.save_npz(params, given)
  else:  # a workdir's newest orbax checkpoint: exported to .npz
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    given = tmp_path / 'workdir'
    ocp.PyTreeCheckpointer().save(given / 'checkpoints' / '10' / 'state',
                                  {'params': params})
  run = _make_run(tmp_path / 'run', set5)
  out = tmp_path / 'pkg' / 'tiny.npz'
  proc = run_script('ship_weights.py', _args(
      given, run, out, tfds_dir, datasets_dir))
  assert proc.returncode == 0, proc.stderr
  if source == 'npz':
    assert out.read_bytes() == given.read_bytes()
  record = json.loads(out.with_suffix('.json').read_text())
  assert record['file'] == 'tiny.npz'
  assert record['file_sha256'] == hashlib.sha256(out.read_bytes()).hexdigest()
  assert (record['steps'], record['batch_size'], record['scales']) == (
      10, 4, [2, 3])
  assert record['trained_from_commit'] == (
      'aaaaaaa, bbbbbbb (uncommitted changes) (3 sessions)')
  assert record['sessions'] == [
      {'steps': [0, 5], 'platform': 'cpu', 'device_kind': None,
       'commit': 'aaaaaaa', 'hours': 0.5},
      {'steps': [5, 5], 'platform': 'cpu', 'device_kind': None,
       'commit': 'bbbbbbb (uncommitted changes)', 'hours': None},
      {'steps': [5, 10], 'platform': 'cpu', 'device_kind': 'H9',
       'commit': 'aaaaaaa', 'hours': 0.01}]
  assert record['psnr']['set5'] == {s: round(set5[s]['psnr'], 3)
                                    for s in ('2', '3')}
  assert record['ssim']['b100'] == {'2': 0.5, '3': 0.5}
  cells = [set5['2']['psnr'], set5['3']['psnr']] + [20.0, 21.0, 22.0] * 2
  assert record['psnr_mean'] == round(sum(cells) / 8, 3)
  assert (record['recipe'], record['hardware'], record['note']) == (
      'tiny.flags', 'a CPU', 'a test')
  loaded = weights.load_npz(out)
  np.testing.assert_array_equal(loaded['conv1']['kernel'],
                                params['conv1']['kernel'])


def test_refuses_an_evaluation_of_other_weights(scored, tmp_path,
                                                datasets_dir, run_script):
  params, set5, tfds_dir = scored
  weights.save_npz(_tiny_params(1), tmp_path / 'other.npz')
  run = _make_run(tmp_path / 'run', set5)  # scores of `params`, not other's
  out = tmp_path / 'tiny.npz'
  out.write_bytes(b'the previous release')
  proc = run_script('ship_weights.py', _args(
      tmp_path / 'other.npz', run, out, tfds_dir, datasets_dir))
  assert proc.returncode == 2
  assert 'does not belong to these weights' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert out.read_bytes() == b'the previous release'
  assert not out.with_suffix('.json').exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'other.npz', 'run', 'tiny.npz']  # no temporary file left


def test_refuses_unfinished_runs_and_incomplete_evaluations(ship_weights,
                                                            tmp_path):
  set5 = {s: {'psnr': 30.0, 'ssim': 0.9} for s in ('2', '3')}
  unfinished = _make_run(tmp_path / 'unfinished', set5, last_step=8)
  with pytest.raises(ship_weights.ShipError, match='end at step 8 of'):
    ship_weights.build_record(
        b'', ship_weights.read_run(unfinished), file_name='x.npz', recipe='',
        hardware='', note='')
  partial = _make_run(tmp_path / 'partial', set5)
  scores = json.loads((partial / 'eval.json').read_text())
  del scores['urban100']['3']
  (partial / 'eval.json').write_text(json.dumps(scores))
  with pytest.raises(ship_weights.ShipError, match='lacks urban100 x3'):
    ship_weights.build_record(
        b'', ship_weights.read_run(partial), file_name='x.npz', recipe='',
        hardware='', note='')
  (partial / 'eval.json').write_text('[37.5, 33.6]')
  with pytest.raises(ship_weights.ShipError, match='not what evaluate.py'):
    ship_weights.build_record(
        b'', ship_weights.read_run(partial), file_name='x.npz', recipe='',
        hardware='', note='')


def test_refuses_weights_that_are_not_a_training_output(run_script, tmp_path,
                                                        reference_dir):
  proc = run_script('ship_weights.py', [
      f'--params={reference_dir / "VDSR_Official.mat"}',
      f'--run={tmp_path}', f'--out={tmp_path / "x.npz"}', '--recipe=r',
      '--hardware=h', '--note=n'])
  assert proc.returncode == 2
  assert 'must be what train.py wrote' in proc.stderr
  assert not list(tmp_path.iterdir())


def test_committed_record_is_what_the_tool_derives(ship_weights):
  """vdsr_291.json: everything but its prose follows from its run folder."""
  committed = json.loads(
      weights.PRETRAINED_PATH.with_suffix('.json').read_text())
  derived = ship_weights.build_record(
      weights.PRETRAINED_PATH.read_bytes(),
      ship_weights.read_run(REPO_ROOT / committed['run']),
      file_name=weights.PRETRAINED_PATH.name, recipe=committed['recipe'],
      hardware=committed['hardware'], note=committed['note'])
  assert derived == committed
