"""Configs are validated before anything compiles, and errors name the field and value."""

import importlib.util
import pathlib

import ml_collections
import pytest

from jaxcls.config import ConfigError, load_config_file, validate
from jaxcls.pretrained import registry

CONFIGS = sorted(p for p in (pathlib.Path(__file__).parents[1] / 'configs').glob('*.py')
                 if p.name != '__init__.py')


def _rows(path):
  """(path, None) or, for a config with rows (`--config PATH:ROW`), (path, row) for each."""
  spec = importlib.util.spec_from_file_location(f'_rows_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return [(path, row) for row in getattr(module, 'ROWS', [None])]


@pytest.mark.parametrize('path,row', [r for p in CONFIGS for r in _rows(p)],
                         ids=lambda v: v.name if isinstance(v, pathlib.Path) else str(v))
def test_every_shipped_config_is_valid(path, row):
  config = load_config_file(path, row)
  spec = config.model.pretrained
  if spec and registry.is_tag(spec) and registry.get_pretrained(spec).source.kind != 'package':
    # A tag fetched on first use (no network here): its architecture, from scratch.
    config.model.name, config.model.width = registry.get_pretrained(spec).arch, 0
    config.model.pretrained = None
  elif spec and not registry.is_tag(spec) and not pathlib.Path(spec).exists():
    config.model.pretrained = None  # Weights a user converts once; the rest must still hold.
  validate(config, device_count=1)


def test_unknown_key_is_named(config):
  config.train.unlock()
  config.train.nmu_epochs = 3
  with pytest.raises(ConfigError, match=r'config\.train\.nmu_epochs: unknown field'):
    validate(config)


def test_unknown_group_is_named(config):
  config.unlock()
  config.evals = ml_collections.ConfigDict({'x': 1})
  with pytest.raises(ConfigError, match=r'config\.evals: unknown field'):
    validate(config)


def test_wrong_type_is_named(config):
  config.unlock()
  config.train = ml_collections.ConfigDict(config.train.to_dict())
  config.train.unlock()
  del config.train['batch_size']
  config.train.batch_size = '64'
  with pytest.raises(ConfigError, match=r"config\.train\.batch_size='64': expected int"):
    validate(config)


def test_batch_size_must_divide_over_devices(config):
  config.train.batch_size = 100
  with pytest.raises(ConfigError, match=r'config\.train\.batch_size=100: must be divisible by '
                     r'the device count \(8\)'):
    validate(config, device_count=8)
  config.train.batch_size = 96
  validate(config, device_count=8)


def test_split_fractions_must_sum_to_one(config):
  config.data.split = (0.8, 0.1, 0.2)
  with pytest.raises(ConfigError, match=r'config\.data\.split=\(0\.8, 0\.1, 0\.2\): .*fractions '
                     r'must sum to 1'):
    validate(config)


def test_split_counts_are_accepted(config):
  config.data.split = (1000, 300, 200)
  validate(config)


def test_unknown_model_lists_known_ones(config):
  config.model.name = 'resnet19'
  with pytest.raises(ConfigError, match=r"config\.model\.name='resnet19': known models: .*resnet18"):
    validate(config)


def test_evaluation_options_are_checked_before_training(config):
  config.evaluate.tta_crops = 3
  with pytest.raises(ConfigError, match=r'config\.evaluate\.tta_crops=3: expected 1 or 5'):
    validate(config)


def test_all_problems_are_reported_at_once(config):
  config.optimizer.learning_rate = -1.0
  config.checkpoint.best_mode = 'maximum'
  with pytest.raises(ConfigError) as error:
    validate(config)
  assert 'config.optimizer.learning_rate=-1.0' in str(error.value)
  assert "config.checkpoint.best_mode='maximum'" in str(error.value)


def test_missing_config_file_is_a_config_error(tmp_path):
  with pytest.raises(ConfigError, match='does not exist'):
    load_config_file(tmp_path / 'nope.py')
