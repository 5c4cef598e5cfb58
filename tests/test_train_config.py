"""Tests for vdsr_jax/train_config.py: validation, flags.txt, resuming."""

import re

import pytest

from test_train import tiny_config  # pylint: disable=g-bad-import-order
from vdsr_jax import train_config


@pytest.mark.parametrize('overrides,match', [
    (dict(total_steps=0), '--total_steps'),
    (dict(scales=(0, 2)), '--scales'),
    (dict(batch_size=2), '--batch_size'),
    (dict(clip_mode='bogus'), '--clip_mode'),
    (dict(learning_rate=-1.0), '--learning_rate'),
    (dict(eval_scales=(1,)), '--eval_scales'),
    (dict(input_workers=-2), '--input_workers'),
    (dict(compute_dtype='float16'), '--compute_dtype'),
    (dict(decay_biases=True, train_biases=False), '--notrain_biases'),
    (dict(loss='l1'), '--loss'),
    (dict(init_fan='fan_avg'), '--init_fan'),
    (dict(stop_at_step=6), '--stop_at_step'),  # total_steps is 6
    (dict(stop_at_step=-1), '--stop_at_step'),
])
def test_config_rejects_impossible_values(overrides, match):
  with pytest.raises(train_config.ConfigError, match=match):
    tiny_config(**overrides)


def test_resume_reads_fields_missing_from_an_older_flags_file(tmp_path):
  # A run started before --compute_dtype existed trained in float32: its
  # flags.txt has no such line, and resuming it in bfloat16 is a change.
  config = tiny_config()
  lines = [line for line in train_config.config_to_flags(config).splitlines()
           if not line.startswith('--compute_dtype')]
  (tmp_path / train_config.FLAGS_FILE).write_text('\n'.join(lines) + '\n')
  meta = {'next_step': 2, 'architecture': train_config.architecture(config)}
  assert train_config.check_resume(config, tmp_path, meta) == {}
  mixed = tiny_config(compute_dtype='bfloat16')
  with pytest.raises(train_config.ConfigError,
                     match='--compute_dtype=float32 there, bfloat16 now'):
    train_config.check_resume(mixed, tmp_path, meta)
  assert train_config.check_resume(mixed, tmp_path, meta, True) == {
      'compute_dtype': ['float32', 'bfloat16']}


def test_config_from_flags_file_reads_back_every_field_type():
  config = tiny_config(decay_boundaries=(3, 5), downscale_factors=(1.0, 0.7),
                       augment=False, data_dir='/data', num_processes=2,
                       time_limit=12.5)
  text = train_config.config_to_flags(config)
  assert train_config.config_from_flags_file(text) == config
  # A field missing from an older flags.txt reads as its default.
  assert train_config.config_from_flags_file('--depth=3\n') == (
      train_config.TrainConfig(depth=3))


@pytest.mark.parametrize('text,expected', [
    ('--depth=three\n', '--depth=three in a flags file cannot be read as int'),
    ('--scales=2,x\n',
     '--scales=2,x in a flags file cannot be read as a comma-separated list '
     'of int'),
    ('--augment=maybe\n',
     '--augment=maybe in a flags file cannot be read as bool'),
    ('--dropout=0.1\n', 'names --dropout, which is not a training flag'),
    ('--depth=0\n', '--depth must be an integer >= 2, got 0'),  # validated
])
def test_config_from_flags_file_bad_values(text, expected):
  with pytest.raises(train_config.ConfigError, match=re.escape(expected)):
    train_config.config_from_flags_file(text)


def test_list_fields_are_the_tuple_fields_with_their_item_types():
  # experiments/train.py reads these flags as comma-separated lists.
  assert train_config.list_fields() == {
      'scales': int, 'downscale_factors': float, 'decay_boundaries': int,
      'eval_scales': int}
  assert train_config.field_types()['data_dir'] is str  # Optional[str]


@pytest.mark.parametrize('name,choices', [
    ('compute_dtype', 'float32, bfloat16'),
    ('init_fan', 'fan_in, fan_out'),
    ('loss', 'mse, paper, sum'),
    ('optimizer', 'sgd, adam'),
    ('clip_mode', 'global_norm, value, none'),
])
def test_an_unknown_choice_is_one_error_naming_the_choices(name, choices):
  with pytest.raises(train_config.ConfigError) as e:
    train_config.TrainConfig(**{name: 'bogus'})
  assert str(e.value) == f"--{name} must be one of {choices}, got 'bogus'."
