"""Feature extraction on cached features (finetune.cache_features): the same model as the full
forward pass, a cache keyed by what the features depend on, resuming, and when it is refused."""

import re

import numpy as np
import pytest

from conftest import make_tiny
from jaxcls.config import (ConfigError, apply_overrides, default_config,
                           resolve_automatic_fields, validate)
from jaxcls.training import feature_cache
from jaxcls.training.loop import build_training


def _probe_config(cache: str = 'on', epochs: int = 2):
  """Tiny feature extraction without random augmentation, with what a cached run must still
  honour: label smoothing, class weights, an EMA; a constant rate (a longer run does not
  change the first epochs)."""
  c = make_tiny(default_config())
  c.finetune.strategy = 'feature_extraction'
  c.finetune.cache_features = cache
  c.data.augment.random_crop_padding = 0
  c.train.num_epochs = epochs
  c.train.label_smoothing = 0.1
  c.train.ema_decay = 0.9
  c.loss.class_weights = 'inverse_frequency'
  c.optimizer.schedule = 'constant'
  return c


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Two epochs with the full forward pass and cached; cached as 1 epoch rerun to 2."""
  from jaxcls.experiment import train_and_evaluate  # pylint: disable=g-import-not-at-top
  dirs = {name: tmp_path_factory.mktemp(name) for name in ('full', 'cached', 'resumed')}
  results = dict(full=train_and_evaluate(_probe_config('off'), str(dirs['full'])),
                 cached=train_and_evaluate(_probe_config('on'), str(dirs['cached'])))
  train_and_evaluate(_probe_config('on', epochs=1), str(dirs['resumed']))
  results['resumed'] = train_and_evaluate(_probe_config('on'), str(dirs['resumed']),
                                          allow_config_change=True)
  return dict(dirs=dirs, results=results)


def _assert_same_run(a: dict, b: dict, rel: float = 1e-4, epochs: int | None = None) -> None:
  """The same history, test metrics and best step; with `epochs`, its first epochs alone."""
  close = lambda expected: pytest.approx(expected, rel=rel, abs=rel / 10)  # noqa: E731
  if epochs is None:
    assert a['test'] == close(b['test']) and a['best_step'] == b['best_step']
  assert len(a['history']) == len(b['history'])
  for x, y in list(zip(a['history'], b['history']))[:epochs]:
    assert x['step'] == y['step']
    for name in ('train', 'val', 'val_raw', 'val_ema'):
      assert x[name] == close(y[name]), (name, x['epoch'])


def test_cached_features_train_the_same_model_as_the_full_forward_pass(runs):
  full, cached = runs['results']['full'], runs['results']['cached']
  assert not full['finetune']['cached_features']['used']
  assert cached['finetune']['cached_features']['used']
  _assert_same_run(cached, full)
  assert cached['test']['accuracy'] == full['test']['accuracy']


def test_gradual_unfreezing_trains_on_features_until_the_backbone_opens(tmp_path, caplog):
  """Epoch 1 trains the head on cached features, epoch 2 opens the next group and takes the
  full step: the same run as without the cache."""
  from jaxcls.experiment import train_and_evaluate  # pylint: disable=g-import-not-at-top

  def gradual(cache):
    c = _probe_config(cache)
    c.finetune.strategy = 'gradual'
    c.finetune.unfreeze_every = 1
    return c

  full = train_and_evaluate(gradual('off'), str(tmp_path / 'full'))
  with caplog.at_level('INFO'):
    cached = train_and_evaluate(gradual('auto'), str(tmp_path / 'cached'))
  assert cached['finetune']['cached_features']['used']
  assert 'for the first 1 epoch(s), then the full forward pass' in caplog.text
  assert 'epoch 2: the backbone opens' in caplog.text
  _assert_same_run(cached, full, epochs=1)  # The cached epoch: as tight as feature extraction.
  # The features computed apart differ from the step's own in the last float bits; once
  # BatchNorm trains on the opened group, SGD at 0.1 grows them to 6e-4 of the validation loss
  # (2e-3 with jaxcls's BatchNorm gradient, the same function summed in another order) and can
  # move an example across a top-5 boundary: losses within 1%, accuracies within an example.
  assert cached['best_step'] == full['best_step'] and len(cached['history']) == 2
  one = 1 / min(full['num_examples'].values())
  for a, b in [(cached['test'], full['test'])] + [(x[name], y[name]) for x, y in zip(
      cached['history'], full['history']) for name in ('train', 'val', 'val_raw', 'val_ema')]:
    assert a.keys() == b.keys()
    for metric in a:
      assert a[metric] == (pytest.approx(b[metric], rel=1e-2) if 'loss' in metric
                           else pytest.approx(b[metric], abs=one + 1e-6)), (metric, a, b)
  assert cached['test']['accuracy'] == full['test']['accuracy']


def test_a_resumed_cached_run_equals_an_uninterrupted_one(runs):
  _assert_same_run(runs['results']['resumed'], runs['results']['cached'])


def test_a_cached_run_checkpoints_the_whole_model(runs):
  """evaluate/predict reopen the checkpoint with images: the backbone is in it."""
  from jaxcls.evaluation.evaluate import evaluate  # pylint: disable=g-import-not-at-top
  reopened = evaluate([runs['dirs']['cached']], split='test')
  probabilities = reopened['results'][reopened['primary']]['probabilities']
  accuracy = float(np.mean(np.argmax(probabilities, -1) == reopened['labels']))
  assert accuracy == pytest.approx(runs['results']['cached']['test']['accuracy'], abs=1e-6)


def _build(config, workdir):
  return build_training(resolve_automatic_fields(config), workdir)


def _cache(config, workdir) -> feature_cache.FeatureCache:
  cache = _build(config, workdir).feature_cache
  assert cache is not None
  return cache


def _files(workdir) -> set[str]:
  return {p.name for p in (workdir / feature_cache.DIRECTORY).glob('*.npz')}


def test_a_rerun_reads_the_cache_files(tmp_path, monkeypatch):
  first = _cache(_probe_config(), tmp_path)
  assert {name.split('-')[0] for name in _files(tmp_path)} == {'train', 'val', 'test'}

  def never(*args):
    raise AssertionError('computed again')

  monkeypatch.setattr(feature_cache.FeatureCache, '_compute', never)
  again = _cache(_probe_config(), tmp_path)
  for split in feature_cache.SPLITS:
    np.testing.assert_array_equal(again.split(split).features, first.split(split).features)
    np.testing.assert_array_equal(again.split(split).labels, first.split(split).labels)


@pytest.mark.parametrize('change', [
    {'seed': 1},  # Other initial weights (not pretrained: their bytes are the key).
    {'data.mean': (0.4, 0.5, 0.6)},
    {'data.image_size': 20},
    {'data.split': (0.6, 0.2, 0.2)},
    {'data.split_seed': 1},
])
def test_a_changed_key_computes_the_features_again(tmp_path, change):
  """In the same workdir: a new file, and the features of a fresh computation, never the
  stale ones. (The workdir's splits.json is removed as a user changing the split would.)"""
  _cache(_probe_config(), tmp_path)
  before = _files(tmp_path)
  (tmp_path / 'splits.json').unlink()
  cache = _cache(apply_overrides(_probe_config(), change), tmp_path)
  assert _files(tmp_path).isdisjoint(before) and len(_files(tmp_path)) == 3
  fresh = _cache(apply_overrides(_probe_config(), change), tmp_path / 'fresh')
  np.testing.assert_array_equal(cache.split('train').features, fresh.split('train').features)


@pytest.mark.parametrize('change, reason', [
    ({'data.augment.horizontal_flip': True}, 'data.augment.horizontal_flip=True'),
    ({'data.augment.random_crop_padding': 2}, 'data.augment.random_crop_padding=2'),
    ({'data.augment.brightness': 0.2}, 'on-device augmentation'),
    ({'mixup.mixup_alpha': 0.2}, 'Mixup/CutMix'),
    ({'finetune.strategy': 'full'}, "finetune.strategy='full' trains more than the head"),
])
def test_on_refuses_what_caching_would_change(tmp_path, change, reason):
  with pytest.raises(ConfigError, match='cache_features=.on.: .*' + re.escape(reason)) as e:
    _build(apply_overrides(_probe_config('on'), change), tmp_path)
  assert '\n' not in str(e.value)


def test_auto_takes_the_full_forward_pass_with_augmentation_and_says_why(tmp_path, caplog):
  config = _probe_config('auto')
  config.data.augment.horizontal_flip = True
  with caplog.at_level('INFO'):
    training = _build(config, tmp_path)
  assert training.feature_cache is None
  assert 'horizontal_flip=True' in training.feature_cache_reason
  assert 'feature cache: off, the full forward pass every step' in caplog.text
  assert 'horizontal_flip=True' in caplog.text
  assert not (tmp_path / feature_cache.DIRECTORY).exists()


def test_auto_takes_the_full_forward_pass_where_the_head_group_reaches_into_the_features(tmp_path):
  """ConvNeXt's head group holds the LayerNorm that `features` ends with."""
  config = _probe_config('auto')
  config.model.update(name='convnext_tiny', width=8)
  config.data.image_size = 32
  training = _build(config, tmp_path)
  assert training.feature_cache is None
  assert 'outside the head module' in training.feature_cache_reason


def test_a_bad_cache_features_value_is_a_config_error(config):
  config.finetune.cache_features = 'always'
  with pytest.raises(ConfigError, match=r"config.finetune.cache_features='always': expected"):
    validate(config)
