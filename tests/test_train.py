"""Tests for vdsr_jax.train and experiments/train.py (tiny models, CPU)."""

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdsr_jax import checkpointing
from vdsr_jax import conv
from vdsr_jax import image_io
from vdsr_jax import image_ops
from vdsr_jax import input_pipeline
from vdsr_jax import reporting
from vdsr_jax import train
from vdsr_jax import train_config
from vdsr_jax import weights
from vdsr_jax.native import dnnl

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTS = pathlib.Path(__file__).resolve().parent
_PatchPipeline = input_pipeline.PatchPipeline  # before any monkeypatching


def synthetic_images(n=4, height=48, width=56, seed=0):
  """Smooth uint8 RGB images (sums of random sinusoids)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
  images = []
  for _ in range(n):
    img = np.zeros((height, width, 3))
    for c in range(3):
      for _ in range(3):
        fy, fx = rng.uniform(0.05, 0.6, 2)
        img[..., c] += rng.uniform(20, 50) * np.sin(fy * yy + fx * xx +
                                                    rng.uniform(0, 6))
    images.append(np.clip(128 + img, 0, 255).astype(np.uint8))
  return images


def tiny_config(**overrides) -> train_config.TrainConfig:
  values = dict(depth=3, features=8, patch_size=17, batch_size=8,
                total_steps=6, log_every=1, checkpoint_every=0,
                eval_scales=(), progress=False, prefetch=1)
  values.update(overrides)
  return train_config.TrainConfig(**values)


def run_tiny(workdir, **overrides):
  """Trains the tiny config on the synthetic images; returns the summary."""
  return train.train_and_evaluate(tiny_config(**overrides), workdir,
                                  train_images=synthetic_images())


def _train_records(workdir):
  return [r for r in reporting.read_metrics(workdir) if r['kind'] == 'train']


def _assert_same_params(a, b):
  for layer in a:
    for name in a[layer]:
      np.testing.assert_array_equal(a[layer][name], b[layer][name],
                                    err_msg=f'{layer}/{name}')


def test_git_state_outside_a_checkout_reads_the_named_commit(tmp_path,
                                                            monkeypatch):
  monkeypatch.delenv('VDSR_GIT_COMMIT', raising=False)
  inside = reporting.git_state()
  assert len(inside['git_commit']) == 40
  assert set(inside) == {'git_commit', 'git_dirty'}
  assert reporting.git_state(tmp_path) == {'git_commit': None,
                                           'git_dirty': None}
  monkeypatch.setenv('VDSR_GIT_COMMIT', 'a' * 40)
  assert reporting.git_state(tmp_path) == {'git_commit': 'a' * 40,
                                           'git_dirty': None}
  # Inside a checkout git itself answers; a commit named otherwise is kept
  # beside its answer (a copy whose git metadata is older than its files).
  assert reporting.git_state() == {**inside, 'named_commit': 'a' * 40}
  monkeypatch.setenv('VDSR_GIT_COMMIT', inside['git_commit'])
  assert reporting.git_state() == inside


def test_smoke_run_writes_everything(tmp_path):
  eval_images = {'set5': synthetic_images(n=1, height=24, width=24, seed=5)}
  out = train.train_and_evaluate(
      tiny_config(total_steps=8, checkpoint_every=4, eval_every=4,
                  eval_scales=(2, 3, 4)),
      tmp_path, train_images=synthetic_images(), eval_images=eval_images)
  assert out['step'] == 8

  records = reporting.read_metrics(tmp_path)
  trains = [r for r in records if r['kind'] == 'train']
  evals = [r for r in records if r['kind'] == 'eval']
  assert [r['step'] for r in trains] == list(range(1, 9))
  for r in trains:
    assert {'step', 'loss', 'lr', 'grad_norm', 'steps_per_sec'} <= set(r)
    assert np.isfinite(r['loss']) and r['steps_per_sec'] > 0
  assert trains[0]['lr'] == pytest.approx(0.1)
  assert trains[-1]['lr'] == pytest.approx(1e-4)  # boundaries 2, 4, 6
  assert [r['step'] for r in evals] == [4, 8]
  assert set(evals[-1]['results']['set5']) == {'2', '3', '4'}
  assert set(evals[-1]['psnr']) == {'set5/x2', 'set5/x3', 'set5/x4'}
  assert out['eval'] == evals[-1]['results']
  sessions = [r for r in records if r['kind'] == 'session']
  assert [r['step'] for r in sessions] == [0]
  # Trained from this checkout (the tests run inside the repository).
  assert len(sessions[0]['git_commit']) == 40
  assert sessions[0]['conv'] == conv.resolve_method(8, 8)
  assert sessions[0]['devices'] == 1 and sessions[0]['processes'] == 1
  assert sessions[0]['device_kind'] == jax.devices()[0].device_kind

  assert (tmp_path / 'curves.png').stat().st_size > 0
  assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
  flags = train_config.parse_flags_file((tmp_path / 'flags.txt').read_text())
  assert flags['depth'] == '3' and flags['scales'] == '2,3,4'
  assert flags['augment'] == 'True'
  assert sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()
                if p.name.isdigit()) == [4, 8]
  # The export and the checkpoint hold the returned params.
  _assert_same_params(weights.load_npz(tmp_path / 'params.npz'),
                      out['params'])
  _assert_same_params(weights.load_params(tmp_path), out['params'])
  _assert_same_params(
      checkpointing.restore_params(tmp_path / 'checkpoints' / '8'),
      out['params'])


def test_loss_goes_down(tmp_path):
  run_tiny(tmp_path, total_steps=20, decay_boundaries=(1000,))  # lr 0.1
  losses = [r['loss'] for r in _train_records(tmp_path)]
  assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5])


def test_pytorch_port_recipe_trains_bias_free(tmp_path):
  """--notrain_biases --loss=sum with a fixed global-norm clip (the port's)."""
  run_tiny(tmp_path, total_steps=20, decay_boundaries=(1000,),
           train_biases=False, loss='sum', clip_mode='global_norm',
           clip_theta=0.4, clip_adjustable=False)
  losses = [r['loss'] for r in _train_records(tmp_path)]
  assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5])
  params = weights.load_npz(tmp_path / train.PARAMS_FILE)
  for name, layer in params.items():
    np.testing.assert_array_equal(layer['bias'], 0.0, err_msg=name)


class _InterruptAt:
  """PatchPipeline that sends this process `signum` when batch `at` is read."""

  at = 3
  signum = signal.SIGINT

  def __init__(self, *args, **kwargs):
    self._inner = _PatchPipeline(*args, **kwargs)

  def __iter__(self):
    return self

  def __next__(self):
    if self._inner.next_step == self.at:
      os.kill(os.getpid(), self.signum)
    return next(self._inner)

  def __getattr__(self, name):
    return getattr(self._inner, name)


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_interrupt_then_resume_is_bit_identical(tmp_path, monkeypatch,
                                                signum):
  straight = run_tiny(tmp_path / 'straight')

  workdir = tmp_path / 'split'
  with monkeypatch.context() as m:
    m.setattr(train.input_pipeline, 'PatchPipeline', _InterruptAt)
    m.setattr(_InterruptAt, 'signum', signum)
    with pytest.raises(train.TrainingInterrupted,
                       match='checkpoint saved') as raised:
      run_tiny(workdir)
  assert raised.value.signal_number == signum
  # The handlers are gone again.
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
  # Ctrl-C during step 4 (batch 3): that step finishes, then it is saved.
  assert checkpointing.find_step_dir(workdir).name == '4'
  assert [r['step'] for r in _train_records(workdir)] == [1, 2, 3, 4]

  resumed = run_tiny(workdir)
  assert resumed['step'] == 6
  _assert_same_params(straight['params'], resumed['params'])
  assert ([r['loss'] for r in _train_records(workdir)] ==
          [r['loss'] for r in _train_records(tmp_path / 'straight')])
  # One session record per start: the first run and the resumption.
  assert [r['step'] for r in reporting.read_metrics(workdir)
          if r['kind'] == 'session'] == [0, 4]


def test_a_stop_between_records_logs_the_steps_since_the_last(tmp_path):
  """Stopped at step 1 with --log_every=4: step 1 is logged, not lost; the
  resumed run logs steps 2-4 at 4, then the final step."""
  with pytest.raises(train.TimeLimitReached):
    run_tiny(tmp_path, log_every=4, time_limit=1e-6)
  run_tiny(tmp_path / 'straight', log_every=1)
  every = [r['loss'] for r in _train_records(tmp_path / 'straight')]
  assert [(r['step'], r['loss']) for r in _train_records(tmp_path)] == [
      (1, every[0])]
  run_tiny(tmp_path, log_every=4)
  records = _train_records(tmp_path)
  assert [r['step'] for r in records] == [1, 4, 6]
  assert records[1]['loss'] == pytest.approx(np.mean(every[1:4]), rel=1e-6)


def test_time_limit_stops_with_a_checkpoint_and_continues_exactly(tmp_path):
  straight = run_tiny(tmp_path / 'straight')
  workdir = tmp_path / 'pieces'
  # A limit that has passed before the first step: every session still does
  # one step (so a rerun loop always progresses), saves it and stops.
  stopped_at = []
  while True:
    try:
      resumed = run_tiny(workdir, time_limit=1e-6)
      break
    except train.TimeLimitReached as e:
      assert 'run the same command to continue' in str(e)
      assert checkpointing.find_step_dir(workdir).name == str(e.step)
      stopped_at.append(e.step)
  assert stopped_at == [1, 2, 3, 4, 5]
  assert resumed['step'] == 6
  _assert_same_params(straight['params'], resumed['params'])
  assert ([r['loss'] for r in _train_records(workdir)] ==
          [r['loss'] for r in _train_records(tmp_path / 'straight')])
  # A generous limit changes nothing: it is a loop flag, not part of the run.
  again = run_tiny(tmp_path / 'generous', time_limit=3600.0)
  _assert_same_params(straight['params'], again['params'])


def test_stop_at_step_saves_that_step_and_the_run_continues_exactly(
    tmp_path):
  straight = run_tiny(tmp_path / 'straight')
  workdir = tmp_path / 'stopped'
  with pytest.raises(train.TimeLimitReached, match='--stop_at_step') as e:
    run_tiny(workdir, stop_at_step=4)
  assert e.value.step == 4
  assert checkpointing.find_step_dir(workdir).name == '4'
  assert [r['step'] for r in _train_records(workdir)] == [1, 2, 3, 4]
  # The same step again would train nothing: one clear error instead,
  # before anything in the workdir is touched (an earlier step likewise).
  flags_before = (workdir / train_config.FLAGS_FILE).read_text()
  with pytest.raises(train_config.ConfigError, match='at step 4 already'):
    run_tiny(workdir, stop_at_step=4)
  with pytest.raises(train_config.ConfigError, match='at step 4 already'):
    run_tiny(workdir, stop_at_step=3)
  assert (workdir / train_config.FLAGS_FILE).read_text() == flags_before
  resumed = run_tiny(workdir)  # a loop flag: dropping it is no change
  assert resumed['step'] == 6
  _assert_same_params(straight['params'], resumed['params'])


def test_parse_duration():
  # experiments/train.py defines absl flags: import it in its own Python,
  # like the other tests of that file.
  code = textwrap.dedent('''
      import sys
      sys.path.insert(0, 'experiments')
      import pytest
      import train as cli  # experiments/train.py
      from vdsr_jax import train_config
      for text, seconds in [('0', 0.0), ('540', 540.0), ('540s', 540.0),
                            ('45m', 2700.0), ('2.5h', 9000.0),
                            (' 1H ', 3600.0)]:
        assert cli.parse_duration(text) == seconds, text
      for bad in ('', 'soon', '-1', '5d', 'nan', 'inf'):
        with pytest.raises(train_config.ConfigError, match='--time_limit'):
          cli.parse_duration(bad)
      print('OK')
  ''')
  _run_python_ok(code)


def test_cli_flags_are_the_config_fields():
  """experiments/train.py defines one flag per TrainConfig field, from the
  field's default, type, help and choices, plus --workdir and
  --allow_config_change; parsing no flags gives back the defaults."""
  code = textwrap.dedent('''
      import dataclasses, sys
      sys.path.insert(0, 'experiments')
      import train as cli  # experiments/train.py
      from vdsr_jax import train_config
      fields = dataclasses.fields(train_config.TrainConfig)
      ours = set(cli.FLAGS.get_key_flags_for_module(sys.modules['train']))
      names = {f.name for f in ours}
      assert names == {f.name for f in fields} | {
          'workdir', 'allow_config_change'}, names
      cli.FLAGS(['train.py', '--workdir=w'])
      assert cli.config_from_flags() == train_config.TrainConfig()
      for f in fields:
        assert len(f.metadata['help']) > 10, f.name
        # (absl puts an enum's choices before its help: '<a|b>: ...')
        assert cli.FLAGS[f.name].help.endswith(f.metadata['help']), f.name
      assert cli.FLAGS['loss'].parser.enum_values == list(
          train_config.LOSSES)
      cli.FLAGS(['train.py', '--workdir=w', '--scales=3', '--noaugment',
                 '--learning_rate=0.01', '--time_limit=2m', '--loss=sum'])
      c = cli.config_from_flags()
      assert (c.scales, c.augment, c.learning_rate, c.time_limit, c.loss) == (
          (3,), False, 0.01, 120.0, 'sum'), c
      print('OK')
  ''')
  _run_python_ok(code)


def test_input_worker_processes_train_identically(tmp_path):
  threaded = run_tiny(tmp_path / 'thread', input_workers=0)
  workers = run_tiny(tmp_path / 'workers', input_workers=2)
  _assert_same_params(threaded['params'], workers['params'])
  sessions = [r for r in reporting.read_metrics(tmp_path / 'workers')
              if r['kind'] == 'session']
  assert sessions[0]['input_workers'] == 2
  # -1 (the default) uses no worker process when training on the CPU.
  assert train.input_workers(tiny_config(), 'cpu') == 0
  assert train.input_workers(tiny_config(input_workers=3), 'cpu') == 3


def test_bfloat16_compute_keeps_float32_state_and_tracks_float32(tmp_path):
  run_tiny(tmp_path / 'f32', total_steps=20, decay_boundaries=(1000,))
  mixed = run_tiny(tmp_path / 'bf16', total_steps=20,
                   decay_boundaries=(1000,), compute_dtype='bfloat16')
  # The network's activations (hence its convolutions) are bfloat16 ...
  def step_jaxpr(config):
    model = train.create_model(config)
    tx, schedule = train.create_optimizer(config)
    state = train.create_train_state(config, model, tx)
    batch = {'inputs': np.zeros((2, 17, 17, 1), np.float32),
             'targets': np.zeros((2, 17, 17, 1), np.float32)}
    jaxpr = jax.make_jaxpr(lambda s, b: train.train_step(
        s, b, model=model, tx=tx, schedule=schedule))(state, batch)
    return str(jaxpr), state

  jaxpr, state = step_jaxpr(tiny_config(compute_dtype='bfloat16'))
  assert 'bf16[2,17,17,8]' in jaxpr and 'f32[2,17,17,8]' not in jaxpr
  assert 'f32[2,17,17,8]' in step_jaxpr(tiny_config())[0]
  # ... while parameters, optimiser state and the exported weights stay
  # float32.
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    assert leaf.dtype in (np.float32, np.int32), leaf.dtype
  for layer in mixed['params'].values():
    for value in layer.values():
      assert value.dtype == np.float32
  # The same optimisation up to bfloat16 rounding: the loss falls as much,
  # and differs from float32's (so bfloat16 really was used).
  f32 = [r['loss'] for r in _train_records(tmp_path / 'f32')]
  bf16 = [r['loss'] for r in _train_records(tmp_path / 'bf16')]
  assert f32 != bf16
  assert np.mean(bf16[-5:]) < 0.3 * np.mean(bf16[:5])
  np.testing.assert_allclose(bf16[0], f32[0], rtol=0.05)
  flags_txt = (tmp_path / 'bf16' / train_config.FLAGS_FILE).read_text()
  assert train_config.parse_flags_file(flags_txt)['compute_dtype'] == 'bfloat16'


def test_training_through_native_winograd_matches_xla(tmp_path, monkeypatch):
  # 16 -> 16 layers take the Winograd kernels under 'auto' on this CPU
  # (tests/test_conv.py checks that they are available here); the same
  # run with XLA's convolutions must end at the same parameters up to
  # rounding.
  assert conv.resolve_method(16, 16) == 'native_winograd'
  fast = run_tiny(tmp_path / 'auto', features=16)
  monkeypatch.setattr(conv, 'METHOD', 'lax')
  reference = run_tiny(tmp_path / 'lax', features=16)
  for layer in reference['params']:
    for name, want in reference['params'][layer].items():
      got = fast['params'][layer][name]
      assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want), (
          layer, name)
  losses = [r['loss'] for r in _train_records(tmp_path / 'auto')]
  want = [r['loss'] for r in _train_records(tmp_path / 'lax')]
  np.testing.assert_allclose(losses, want, rtol=1e-4)
  # The session records say which kernels ran, and which build of them.
  (fast_session,) = [r for r in reporting.read_metrics(tmp_path / 'auto')
                     if r['kind'] == 'session']
  (lax_session,) = [r for r in reporting.read_metrics(tmp_path / 'lax')
                    if r['kind'] == 'session']
  assert fast_session['conv'] == 'native_winograd'
  assert fast_session['winograd_isa'] == dnnl.winograd_isa()
  assert fast_session['winograd_isa'] in ('avx512', 'avx2')
  assert lax_session['conv'] == 'lax' and 'winograd_isa' not in lax_session
  # And the host CPU that ran them, as reporting.cpu_info reads it.
  host = reporting.cpu_info()
  for session in (fast_session, lax_session):
    assert {k: session[k] for k in host} == host
  want_simd = {'avx512': 'avx512f', 'avx2': 'avx2'}[dnnl.winograd_isa()]
  assert want_simd in fast_session['cpu_simd']


class _NaNAt:
  """PatchPipeline whose batch `at` has NaN inputs."""

  at = 4

  def __init__(self, *args, **kwargs):
    self._inner = _PatchPipeline(*args, **kwargs)

  def __iter__(self):
    return self

  def __next__(self):
    step = self._inner.next_step
    batch = next(self._inner)
    if step == self.at:
      batch = dict(batch, inputs=np.full_like(batch['inputs'], np.nan))
    return batch

  def __getattr__(self, name):
    return getattr(self._inner, name)


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  monkeypatch.setattr(train.input_pipeline, 'PatchPipeline', _NaNAt)
  with pytest.raises(train.TrainingError) as info:
    run_tiny(tmp_path, checkpoint_every=2, log_every=3)
  message = str(info.value)
  assert 'diverged at step 5' in message
  assert 'last good checkpoint (step 4)' in message
  assert checkpointing.find_step_dir(tmp_path).name == '4'
  params = checkpointing.restore_params(tmp_path)
  assert all(np.isfinite(v).all() for v in jax.tree.leaves(params))
  assert not (tmp_path / 'params.npz').exists()


def test_restore_params_without_checkpoint(tmp_path):
  with pytest.raises(weights.WeightsError, match='no orbax training'):
    checkpointing.restore_params(tmp_path)
  with pytest.raises(weights.WeightsError, match='No such'):
    weights.load_params(tmp_path / 'missing')


def test_architecture_mismatch_on_resume(tmp_path):
  run_tiny(tmp_path, total_steps=2)
  with pytest.raises(train_config.ConfigError, match='another architecture'):
    run_tiny(tmp_path, total_steps=4, features=4)


def test_loss_scales():
  assert train.loss_scale(tiny_config(loss='mse')) == 1.0
  config = tiny_config(loss='paper')
  assert train.loss_scale(config) == 0.5 * config.patch_size ** 2
  config = tiny_config(loss='sum')
  assert train.loss_scale(config) == (config.patch_size ** 2
                                      * config.batch_size)


def test_empty_training_set(tmp_path):
  with pytest.raises(train_config.ConfigError, match='empty'):
    train.train_and_evaluate(tiny_config(), tmp_path, train_images=[])


@pytest.mark.parametrize('args,expected', [
    (['--bogus=1'], 'bogus'),
    (['--scales=0,2'], '--scales'),
    (['--scales=two'], '--scales'),
    (['--total_steps=0'], '--total_steps'),
    (['--clip_mode=maybe'], 'clip_mode'),
    (['--time_limit=soon'], '--time_limit'),
    (['--time_limit=-5m'], '--time_limit'),
    ([], 'workdir'),
])
def test_cli_bad_flags_one_line(tmp_path, args, expected, run_script):
  if expected != 'workdir':
    args = [f'--workdir={tmp_path}', *args]
  result = run_script('train.py', args)
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert 'Traceback' not in result.stderr
  assert expected in lines[0]


def _run_python_ok(code, timeout=120):
  """Runs `code` with this Python from the repo root (no PYTHONPATH, as a
  user would); it must exit 0 and print OK. Returns the CompletedProcess."""
  env = dict(os.environ)
  env.pop('PYTHONPATH', None)
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0 and 'OK' in result.stdout, result.stderr
  return result


def test_flagfiles_parse_to_the_expected_configs():
  code = textwrap.dedent('''
      import dataclasses
      import sys
      sys.path.insert(0, 'experiments')
      import train as cli  # experiments/train.py
      from vdsr_jax import train_config
      cli.FLAGS(['x', '--flagfile=experiments/configs/vdsr_paper.flags',
                 '--workdir=w'])
      # The paper flagfile is the code defaults but for the objective and
      # the element-wise clipping (see the flagfile's comment and
      # experiments/results/README.md).
      assert cli.config_from_flags() == train_config.TrainConfig(
          loss='paper', clip_mode='value', clip_theta=1e-4)
      cli.FLAGS.unparse_flags()
      cli.FLAGS(['x', '--flagfile=experiments/configs/smoke.flags',
                 '--workdir=w'])
      smoke = cli.config_from_flags()
      assert (smoke.depth, smoke.features, smoke.patch_size, smoke.batch_size,
              smoke.total_steps) == (4, 16, 21, 8, 40), smoke
      assert smoke.learning_rate == 0.1 and smoke.eval_scales == (2, 3, 4)
      cli.FLAGS.unparse_flags()
      cli.FLAGS(['x', '--flagfile=experiments/configs/vdsr_paper_91k_tail.flags',
                 '--workdir=w'])
      # The paper recipe, 91,000 steps with a long lr-0.001 phase.
      tail = cli.config_from_flags()
      assert tail == dataclasses.replace(
          train_config.TrainConfig(loss='paper', clip_mode='value',
                                   clip_theta=1e-4),
          total_steps=91000, decay_boundaries=(9100, 18200, 86450),
          log_every=200, eval_every=9100, checkpoint_every=9100,
          keep_checkpoints=2), tail
      cli.FLAGS.unparse_flags()
      cli.FLAGS(['x', '--flagfile=experiments/configs/vdsr_pytorch_port.flags',
                 '--workdir=w'])
      # The PyTorch port's recipe: bias-free, fan-out initialisation, summed
      # loss, fixed clip 0.4.
      port = cli.config_from_flags()
      assert port == train_config.TrainConfig(
          batch_size=128, augment=False, downscale_factors=(1.0, 0.7, 0.5),
          train_biases=False, init_fan='fan_out', loss='sum',
          clip_adjustable=False,
          total_steps=36200, decay_every=7240, log_every=100,
          checkpoint_every=2000, eval_every=7240), port
      assert port.boundaries == (7240, 14480, 21720, 28960)
      print('OK')
  ''')
  _run_python_ok(code)


def test_cli_missing_data_and_device_mismatch(tmp_path, run_script):
  empty = tmp_path / 'no_data'
  empty.mkdir()
  result = run_script('train.py', [
      f'--workdir={tmp_path / "w"}', f'--data_dir={empty}',
      f'--tfds_dir={tmp_path / "tfds"}', '--max_train_images=1'])
  _assert_one_error(result, 'train291')

  result = run_script(
      'train.py', [f'--workdir={tmp_path / "w2"}', '--batch_size=6'],
      env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  _assert_one_error(result, 'divisible by the number of devices (4)')


def _assert_one_error(result, expected):
  """Exit status 1, no traceback, one error line (last), naming `expected`.

  Errors found once training has started may follow INFO log lines.
  """
  assert result.returncode == 1, result.stderr
  assert 'Traceback' not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert [l for l in lines if 'error' in l.lower()] == lines[-1:], lines
  assert lines[-1].startswith('train.py: error: ')
  assert expected in lines[-1]


_SUBPROCESS_RUN = textwrap.dedent('''
    import json, sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    import test_train
    signal_at = json.loads({signal_at!r})
    if signal_at:
      test_train._InterruptAt.at, test_train._InterruptAt.signum = signal_at
      test_train.train.input_pipeline.PatchPipeline = test_train._InterruptAt
    try:
      out = test_train.run_tiny({workdir!r}, **json.loads({overrides!r}))
    except test_train.train.TrainingInterrupted as e:
      print('INTERRUPTED', e)
      sys.exit(128 + e.signal_number)
    except test_train.train.TimeLimitReached as e:
      print('TIME LIMIT', e)
      sys.exit(75)
    print('STEP', out['step'])
''')


def run_tiny_in_subprocess(workdir, log, env=None, signal_at=None,
                           **overrides):
  """Starts run_tiny in a fresh Python (e.g. with other XLA_FLAGS).

  stdout and stderr go to the file `log`. `signal_at=(step, signum)`: the
  process sends itself `signum` when it reads batch `step`.
  """
  code = _SUBPROCESS_RUN.format(repo=str(REPO), tests=str(TESTS),
                                workdir=str(workdir),
                                signal_at=json.dumps(signal_at),
                                overrides=json.dumps(overrides))
  env = dict(os.environ, **(env or {}))
  with open(log, 'w') as f:
    return subprocess.Popen([sys.executable, '-c', code], env=env, cwd=REPO,
                            stdout=f, stderr=subprocess.STDOUT)


def test_four_devices_match_one(tmp_path):
  log = tmp_path / 'four.log'
  proc = run_tiny_in_subprocess(
      tmp_path / 'four', log,
      env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  try:
    one = run_tiny(tmp_path / 'one')
    proc.wait(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 0, log.read_text()[-3000:]
  losses_one = [r['loss'] for r in _train_records(tmp_path / 'one')]
  losses_four = [r['loss'] for r in _train_records(tmp_path / 'four')]
  assert len(losses_one) == len(losses_four) == 6
  np.testing.assert_allclose(losses_four, losses_one, rtol=1e-5)
  four = weights.load_npz(tmp_path / 'four' / 'params.npz')
  for layer in one['params']:
    np.testing.assert_allclose(four[layer]['kernel'],
                               one['params'][layer]['kernel'],
                               rtol=1e-4, atol=1e-6)


def _write_pngs(folder, images):
  folder.mkdir()
  for i, img in enumerate(images):
    image_io.write_image(folder / f'{i:02d}.png', img)


def test_image_folders_train_like_the_images_and_need_no_tfds(tmp_path):
  images = synthetic_images()
  y_dir, eval_dir = tmp_path / 'train_y', tmp_path / 'set5'
  _write_pngs(y_dir, [input_pipeline.luminance_u8(x) for x in images])
  _write_pngs(eval_dir, synthetic_images(n=2, height=40, width=40, seed=1))
  # The Y planes give the RGB images' batches bit for bit.
  config = tiny_config(train_images_dir=str(y_dir))
  from_folder = train.load_train_images(config)
  assert [x.ndim for x in from_folder] == [2] * len(images)
  pc = config.pipeline_config()
  for step in (0, 3):
    a = input_pipeline.make_batch(input_pipeline.prepare_images(from_folder),
                                  pc, step)
    b = input_pipeline.make_batch(input_pipeline.prepare_images(images),
                                  pc, step)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # The command line trains and evaluates from the folders with TFDS
  # unimportable.
  code = textwrap.dedent(f'''
      import sys
      sys.modules['tensorflow_datasets'] = None  # import fails
      sys.path.insert(0, 'experiments')
      import train as cli
      sys.argv = ['train.py', '--flagfile=experiments/configs/smoke.flags',
                  '--workdir={tmp_path / "w"}', '--train_images_dir={y_dir}',
                  '--eval_images_dir={eval_dir}', '--total_steps=4',
                  '--eval_every=2', '--eval_scales=2', '--patch_size=17',
                  '--noprogress']
      try:
        cli.app.run(cli.main, flags_parser=cli.parse_flags)
      except SystemExit as e:
        assert e.code in (0, None), e.code
      assert 'vdsr_jax.datasets' not in sys.modules
      print('OK')
  ''')
  _run_python_ok(code, timeout=300)
  evals = [r for r in reporting.read_metrics(tmp_path / 'w')
           if r['kind'] == 'eval']
  assert [r['step'] for r in evals] == [2, 4]
  assert 'set5' in evals[-1]['results']
  assert (tmp_path / 'w' / 'params.npz').exists()


def test_image_folder_errors(tmp_path):
  with pytest.raises(train_config.ConfigError, match='not a folder'):
    train.load_train_images(tiny_config(
        train_images_dir=str(tmp_path / 'missing')))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(train_config.ConfigError, match='holds no images'):
    train.load_train_images(tiny_config(train_images_dir=str(tmp_path /
                                                             'empty')))
  (tmp_path / 'bad').mkdir()
  (tmp_path / 'bad' / 'x.png').write_bytes(b'not a png')
  with pytest.raises(train_config.ConfigError, match='x.png'):
    train.load_eval_images(tiny_config(eval_images_dir=str(tmp_path / 'bad')))
  deep = tmp_path / 'deep'
  deep.mkdir()
  image_io.write_image(deep / 'y.png', np.zeros((8, 8), np.uint16))
  with pytest.raises(train_config.ConfigError, match='y.png is uint16'):
    train.load_train_images(tiny_config(train_images_dir=str(deep)))
  # max_train_images takes the first files by name.
  _write_pngs(tmp_path / 'few', synthetic_images(n=3))
  first = train.load_train_images(tiny_config(
      train_images_dir=str(tmp_path / 'few'), max_train_images=2))
  np.testing.assert_array_equal(first[1], synthetic_images(n=3)[1])
  assert len(first) == 2


def test_resume_with_other_training_flags_needs_explicit_override(tmp_path):
  run_tiny(tmp_path, total_steps=4, checkpoint_every=2)
  # Loop flags may change freely.
  run_tiny(tmp_path, total_steps=4, checkpoint_every=2, log_every=2)
  # Training flags may not, unless asked for; nothing is written on refusal.
  flags_before = (tmp_path / 'flags.txt').read_text()
  with pytest.raises(train_config.ConfigError,
                     match=r'--learning_rate=0.1 there, 0.05 now.*'
                           r'--allow_config_change'):
    run_tiny(tmp_path, total_steps=6, learning_rate=0.05)
  assert (tmp_path / 'flags.txt').read_text() == flags_before
  out = train.train_and_evaluate(
      tiny_config(total_steps=6, learning_rate=0.05), tmp_path,
      train_images=synthetic_images(), allow_config_change=True)
  assert out['step'] == 6
  sessions = [r for r in reporting.read_metrics(tmp_path)
              if r['kind'] == 'session']
  assert sessions[-1]['changed_flags'] == {
      'learning_rate': ['0.1', '0.05'], 'total_steps': ['4', '6']}
  assert 'changed_flags' not in sessions[0]
  # The architecture must match even then.
  with pytest.raises(train_config.ConfigError, match='another architecture'):
    train.train_and_evaluate(tiny_config(total_steps=8, features=4), tmp_path,
                             train_images=synthetic_images(),
                             allow_config_change=True)


def _flagfile_text(flagfile: str) -> str:
  """The flags.txt lines (then 'OK') of the TrainConfig that
  experiments/train.py builds from experiments/configs/FLAGFILE (parsed by
  absl, in a fresh Python so that this process's flags stay untouched)."""
  code = textwrap.dedent('''
      import sys
      sys.path.insert(0, 'experiments')
      import train as cli
      from vdsr_jax import train_config
      cli.FLAGS(['x', '--flagfile=experiments/configs/__FLAGFILE__',
                 '--workdir=w'])
      print(train_config.config_to_flags(cli.config_from_flags()))
      print('OK')
  ''').replace('__FLAGFILE__', flagfile)
  return _run_python_ok(code).stdout


def _flagfile_flags(flagfile: str) -> dict:
  """{flag: value string} of `_flagfile_text(flagfile)`."""
  return train_config.parse_flags_file(_flagfile_text(flagfile))


def _port_grid_patches(datasets_dir: pathlib.Path) -> int:
  """Patches the port's data/generate_train.m cuts from the 291 images.

  Each image downsized by 1, 0.7 and 0.5 (MATLAB's output size), then for
  scales 2, 3, 4 modcropped and cut into 41x41 patches at stride 41; sizes
  from IMAGE_INFO.tsv.
  """
  with open(datasets_dir / 'IMAGE_INFO.tsv') as f:
    rows = [r for r in csv.DictReader(f, delimiter='\t')
            if r['path'].startswith('train291/')]
  assert len(rows) == 291
  count = 0
  for row in rows:
    for factor in (1.0, 0.7, 0.5):
      h = image_ops.output_size(int(row['height']), factor)
      w = image_ops.output_size(int(row['width']), factor)
      for s in (2, 3, 4):
        rows_, cols = [max(0, (n - n % s - 41) // 41 + 1) for n in (h, w)]
        count += rows_ * cols
  return count


@pytest.mark.parametrize('flagfile,variants', [
    ('vdsr_pytorch_port.flags', 1),  # data/generate_train.m without flips
    ('vdsr_pytorch_port_aug.flags', 12),  # 3 flips x 4 rotations
])
def test_port_flagfiles_count_the_ports_epochs(datasets_dir, flagfile,
                                               variants):
  """50 epochs of the port's patches in batches of 128 (the last batch of an
  epoch partial), the lr divided by 10 every 10 epochs."""
  values = _flagfile_flags(flagfile)
  patches = _port_grid_patches(datasets_dir)
  assert patches == 92_636
  batches = -(-variants * patches // int(values['batch_size']))
  assert values['batch_size'] == '128'
  assert values['augment'] == ('True' if variants > 1 else 'False')
  assert values['downscale_factors'] == '1.0,0.7,0.5'
  assert int(values['total_steps']) == 50 * batches
  assert int(values['decay_every']) == 10 * batches


@pytest.mark.parametrize('flagfile,shared_until', [
    ('vdsr_pytorch_port_aug_48k.flags', 45_100),
    ('vdsr_pytorch_port_aug_100k.flags', 97_000),
    ('vdsr_pytorch_port_aug_105k.flags', 102_030),
    ('vdsr_pytorch_port_aug_108k.flags', 105_968),
    ('vdsr_pytorch_port_aug_130k.flags', 127_000),
])
def test_port_forks_repeat_the_full_runs_updates(flagfile, shared_until):
  """A cut-down schedule forked from vdsr_port_aug/'s carried checkpoint
  trains exactly as the full run until `shared_until` (its own second decay,
  or its first where it decays early), so that checkpoint may start it."""
  texts = [_flagfile_text(f) for f in (
      flagfile, 'vdsr_pytorch_port_aug.flags')]
  fork, full = (train_config.parse_flags_file(t) for t in texts)
  schedule = ('total_steps', 'decay_every', 'decay_boundaries')
  differ = {k for k in set(fork) | set(full) if fork.get(k) != full.get(k)}
  assert differ <= set(schedule) | set(train_config.LOOP_FIELDS), differ

  def decays_before(text):
    """How many decays have happened at steps 0..shared_until."""
    boundaries = train_config.config_from_flags_file(text).boundaries
    return np.searchsorted(boundaries, np.arange(shared_until + 1),
                           side='right')

  steps_fork, steps_full = (decays_before(t) for t in texts)
  # Same learning rate at every step before shared_until, not after it.
  assert np.array_equal(steps_fork[:-1], steps_full[:-1])
  assert steps_fork[-1] != steps_full[-1]


@pytest.mark.parametrize('flagfile,run', [
    ('vdsr_pytorch_port_aug_108k.flags', 'vdsr_port_aug_108k'),
    ('vdsr_pytorch_port_aug_105k.flags', 'vdsr_port_aug_105k'),  # shipped
    ('vdsr_pytorch_port_aug_100k.flags', 'vdsr_port_aug_100k'),
    ('vdsr_pytorch_port_aug_48k.flags', 'vdsr_port_aug_48k'),
    ('vdsr_paper_54k.flags', 'vdsr_291'),
    ('vdsr_paper_36k.flags', 'vdsr_291_36k'),
    ('vdsr_pytorch_port.flags', 'vdsr_port'),
    ('vdsr_pytorch_port_aug.flags', 'vdsr_port_aug'),  # in progress, carried
])
def test_trained_runs_match_their_flagfiles(flagfile, run):
  """experiments/results/RUN was trained with experiments/configs/FLAGFILE."""
  now = _flagfile_flags(flagfile)
  then = train_config.read_flags_file(
      (REPO / 'experiments' / 'results' / run / 'flags.txt').read_text())
  differ = {k: (then.get(k), now.get(k)) for k in set(then) | set(now)
            if k not in train_config.LOOP_FIELDS and then.get(k) != now.get(k)}
  assert not differ, differ


def test_the_loop_keeps_at_most_a_few_steps_in_flight():
  """JAX dispatches steps asynchronously; unbounded, the loop ran up to
  log_every steps ahead of the device (100 steps, 2-4 minutes of a 2-core
  CPU), and SIGTERM or the time limit took effect only after all of them.
  Each new step's metrics wait for the step MAX_STEPS_IN_FLIGHT before."""

  @jax.jit
  def slow_step(a):  # ~0.05 s on 2 cores, dispatched in microseconds
    out = jax.lax.fori_loop(0, 20, lambda i, a: jnp.tanh(a @ a), a)
    return {'loss': out.sum()}

  a = jnp.full((600, 600), 1e-3)
  slow_step(a)['loss'].block_until_ready()  # compiled
  metrics = train._Metrics()  # pylint: disable=protected-access
  for step in range(1, 7):
    metrics.add(step, slow_step(a))
    ready = [m['loss'].is_ready() for _, m in metrics.pending]
    assert all(ready[:-train.MAX_STEPS_IN_FLIGHT]), (step, ready)
  assert len(metrics.pending) == 6  # waiting is not fetching


def test_cli_sigterm_saves_and_exits_143(tmp_path):
  """What a scheduler's preemption notice does to experiments/train.py."""
  _write_pngs(tmp_path / 'train', synthetic_images())
  workdir = tmp_path / 'w'
  env = dict(os.environ)
  env.pop('PYTHONPATH', None)
  proc = subprocess.Popen(
      [sys.executable, str(REPO / 'experiments' / 'train.py'),
       f'--workdir={workdir}', f'--train_images_dir={tmp_path / "train"}',
       '--depth=3', '--features=8', '--patch_size=17', '--batch_size=8',
       '--total_steps=100000', '--log_every=1', '--checkpoint_every=0',
       '--eval_scales=', '--noprogress'],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  try:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
      if (workdir / reporting.METRICS_FILE).exists() and _train_records(
          workdir):
        break
      time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  assert proc.returncode == 143, stderr
  assert 'SIGTERM: saving a checkpoint' in stdout
  assert 'checkpoint saved' in stderr
  assert 'Traceback' not in stderr
  saved = int(checkpointing.find_step_dir(workdir).name)
  assert 1 <= saved < 100000
  assert saved == _train_records(workdir)[-1]['step']


def test_cli_time_limit_saves_and_exits_75(tmp_path, run_script):
  """--time_limit: a checkpoint, status 75, and the same command continues."""
  _write_pngs(tmp_path / 'train', synthetic_images())
  workdir = tmp_path / 'w'
  args = [f'--workdir={workdir}', f'--train_images_dir={tmp_path / "train"}',
          '--depth=3', '--features=8', '--patch_size=17', '--batch_size=8',
          '--total_steps=3', '--log_every=1', '--checkpoint_every=0',
          '--eval_scales=', '--noprogress']
  result = run_script('train.py', args + ['--time_limit=0.001s'])
  assert result.returncode == 75, result.stderr
  assert 'Traceback' not in result.stderr
  assert 'Time limit of 0.001 s reached at step 1 of 3' in result.stderr
  assert checkpointing.find_step_dir(workdir).name == '1'
  result = run_script('train.py', args + ['--time_limit=1h'])
  assert result.returncode == 0, result.stderr
  assert [r['step'] for r in _train_records(workdir)] == [1, 2, 3]
  assert (workdir / train.PARAMS_FILE).exists()
