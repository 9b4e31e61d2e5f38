"""Cached backbone features for feature extraction: the frozen forward pass once, not per epoch.

With finetune.strategy='feature_extraction' only the head trains, and the
frozen backbone normalises with its BatchNorm running statistics, its dropout
off (`finetune.freeze_modules`). Without random augmentation before it, its
pooled features are then a pure function of the image, and every epoch
recomputes the same ones. `from_config` decides whether that holds for a run
(config.finetune.cache_features: 'auto', 'on', 'off') and says why in the log;
where it holds, a `FeatureCache` computes each split's features once (in eval
mode, in the model's compute dtype, batched and sharded like eval batches),
keeps them in memory and in WORKDIR/feature_cache/, and yields train batches
of the same examples in the same order as the image pipeline
(`data.epoch_order`). `steps.head_train_step` then runs the same update on the
same full train state as `steps.train_step` (same head initialisation,
optimizer, loss, EMA, checkpoints), so a cached run trains the same model.

A cache file is keyed by a hash of everything the features depend on: the
weights (the pretrained checkpoint's sha256, or the initial frozen weights'
bytes), the preprocessing, the model config and the split's examples
(`data.examples_digest`); the key is in the file's name and inside it, and a
file whose key differs is never read.
"""

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from jaxcls import data
from jaxcls.data import device_augment
from jaxcls.errors import ConfigError, ConfigProblems, either
from jaxcls.models.interface import get_submodule
from jaxcls.training import finetune, parallel
from jaxcls.training.setup import RunParts
from jaxcls.training.steps import normalize

MODES = ('auto', 'on', 'off')  # config.finetune.cache_features.
VERSION = 1  # Of the cache files: a new version never reads an older one (it is in the key).
DIRECTORY = 'feature_cache'  # Under the workdir.
SPLITS = ('train', 'val', 'test')
# data.augment's host-side random transforms of the train images (jaxcls.data.pipeline).
HOST_RANDOM_TRANSFORMS = ('random_resized_crop', 'random_crop_padding', 'horizontal_flip')


def config_errors(finetune_config: ml_collections.ConfigDict) -> list[str]:
  p = ConfigProblems('finetune', finetune_config)
  p.check(finetune_config.cache_features in MODES, 'cache_features', f'expected {either(MODES)}')
  return p


@dataclasses.dataclass(frozen=True)
class SplitFeatures:
  """One split's pooled features [N, F] (the model's compute dtype) and labels [N], in order."""
  features: np.ndarray
  labels: np.ndarray


def from_config(config, workdir: Path, dataset: data.Dataset, parts: RunParts,
                plan: finetune.FinetunePlan, mixup_enabled: bool,
                batch_sharding: jax.sharding.Sharding) -> tuple['FeatureCache | None', str]:
  """(the run's FeatureCache, or None for the full forward pass every step; why), logged.

  'auto' caches whenever that trains the same model; 'on' raises a one-line
  ConfigError naming why it cannot; 'off' never caches.
  """
  mode = config.finetune.get('cache_features', 'auto')
  if mode == 'off':
    reasons = ['finetune.cache_features=off']
  else:
    # The config's reasons first: the model's checks trace it, which takes a moment.
    reasons = (_config_reasons(config, plan, mixup_enabled)
               or _model_reasons(config, parts, plan))
    if reasons and mode == 'on':
      raise ConfigError(f"config.finetune.cache_features='on': the backbone's features cannot "
                        f"be cached: {'; '.join(reasons)}")
  if reasons:
    why = '; '.join(reasons)
    logging.info('feature cache: off, the full forward pass every step (%s)', why)
    return None, why
  why = ('the head trains alone, without random augmentation or mixing: the frozen '
         'backbone\'s features are a pure function of the image')
  opens = next((epoch for epoch, trainable in plan.phases if not head_only(trainable)), None)
  logging.info('feature cache: on, each split\'s features computed once (%s), the head trains '
               'on them %s(%s)', workdir / DIRECTORY,
               '' if opens is None else f'for the first {opens} epoch(s), then the full '
               'forward pass ',
               why)
  return FeatureCache(config, workdir, dataset, parts, batch_sharding), why


def head_only(trainable_groups) -> bool:
  """Whether a phase training `trainable_groups` trains the head alone: the phases that can
  train on cached features (all of feature extraction; a gradual plan's first)."""
  return tuple(trainable_groups) == (finetune.HEAD,)


def _config_reasons(config, plan: finetune.FinetunePlan, mixup_enabled: bool) -> list[str]:
  """Why the config's training needs the backbone's forward pass at every step (empty: none)."""
  reasons = []
  if not head_only(plan.trainable_at(0)):
    reasons.append(f'finetune.strategy={config.finetune.strategy!r} trains more than the head '
                   'from the start')
  augment = config.data.augment
  if device_augment.enabled(augment):
    reasons.append('on-device augmentation (data.augment) changes the images at every step')
  reasons += [f'data.augment.{field}={augment[field]!r} transforms the train images at random'
              for field in HOST_RANDOM_TRANSFORMS if augment[field]]
  if mixup_enabled:
    reasons.append('Mixup/CutMix (config.mixup) mix images; mixing their pooled features would '
                   'train another model')
  if jax.process_count() > 1:
    reasons.append('a multi-host run (every host would need every split\'s features)')
  return reasons


def _model_reasons(config, parts: RunParts, plan: finetune.FinetunePlan) -> list[str]:
  """Why the model's train step is not its head applied to its eval-mode features (empty:
  it is), checked on the model itself, frozen as the plan freezes it, not by its family."""
  frozen = plan.frozen_at(0)
  train_graph = finetune.phase_graphdef(parts.train_graph, parts.params, parts.model_state,
                                        frozen)
  model = nnx.merge(train_graph, parts.params, parts.model_state)
  reasons = []
  # features() runs the modules before the head; a trainable parameter elsewhere (ConvNeXt's
  # head LayerNorm sits in `features`) would change the features as it trains.
  in_head = {id(v) for _, v in nnx.iter_graph(get_submodule(model, model.head_name))
             if isinstance(v, nnx.Param)}
  trainable = finetune.Trainable(parts.group_patterns, plan.trainable_at(0))
  outside = [finetune.path_string(path) for path, v in nnx.iter_graph(model)
             if isinstance(v, nnx.Param) and trainable(path, v) and id(v) not in in_head]
  if outside:
    reasons.append(f'the head group trains {outside[0]!r}, outside the head module '
                   f'{model.head_name!r}, which the features may depend on')

  images = jax.ShapeDtypeStruct((1, config.data.image_size, config.data.image_size, 3),
                                jnp.dtype(config.model.dtype))

  def program(graph, forward) -> str:  # The traced computation, to compare two of them.
    return str(jax.make_jaxpr(lambda p, s, x: forward(nnx.merge(graph, p, s), x))(
        parts.params, parts.model_state, images))

  features = lambda m, x: m.features(x)  # noqa: E731
  if program(train_graph, features) != program(parts.eval_graph, features):
    reasons.append('the backbone computes its features differently in training than in eval '
                   'mode (a BatchNorm or dropout outside the frozen groups)')
  elif not parts.heads_per_task and (
      program(train_graph, lambda m, x: m.logits_and_aux(x))
      != program(train_graph, lambda m, x: (m.classify(m.features(x)), ()))):
    reasons.append(f'{type(model).__name__}\'s training forward pass is not its head on its '
                   'features (auxiliary classifiers train)')
  return reasons


class FeatureCache:
  """The frozen backbone's pooled features of every split and their train and eval batches.

  All splits are read or computed when it is built, from the initial weights
  (`parts`), before the first train step donates their buffers.
  """

  def __init__(self, config, workdir: Path, dataset: data.Dataset, parts: RunParts,
               batch_sharding: jax.sharding.Sharding):
    self._config, self._dataset, self._sharding = config, dataset, batch_sharding
    self._directory = workdir / DIRECTORY
    self._parts = parts
    started = time.monotonic()
    c = config.data
    head = finetune.Trainable(parts.group_patterns, (finetune.HEAD,))
    self._key_parts = dict(
        version=VERSION,
        weights=(parts.pretrained.sha256 if parts.pretrained is not None
                 else _tree_sha256(nnx.split_state(parts.params, head, ...)[1],
                                   parts.model_state)),
        preprocessing=dict(image_size=c.image_size, resize_size=c.resize_size,
                           interpolation=c.get('interpolation') or 'bilinear', mean=list(c.mean),
                           std=list(c.std), dtype=config.model.dtype),
        model=config.model.to_dict(), source=c.source)
    test_is_val = dataset.test is dataset.val  # A source without a test split tests on val.
    self._splits = {name: self._load_or_compute(name)
                    for name in SPLITS if not (name == 'test' and test_is_val)}
    if test_is_val:
      self._splits['test'] = self._splits['val']
    self.seconds = time.monotonic() - started  # Spent reading or computing features.

  @property
  def batch_size(self) -> int:
    return self._config.train.eval_batch_size or self._config.train.batch_size

  def split(self, name: str) -> SplitFeatures:
    """The features of split `name` ('train', 'val', 'test')."""
    return self._splits[name]

  def train_batches(self, epoch: int, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches k = start_step, ... of train epoch `epoch`: the examples of the image
    pipeline's batches (`data.train_batches`, the same sampler, seed and epoch), in order."""
    train, size = self.split('train'), self._config.train.batch_size
    order = data.epoch_order(self._dataset.train, self._config.data, global_batch_size=size,
                             seed=self._config.seed, epoch=epoch)
    for k in range(start_step, len(order) // size):
      indices = order[k * size:(k + 1) * size]
      yield {'features': train.features[indices], 'label': train.labels[indices]}

  def eval_batches(self, name: str) -> Iterator[dict[str, np.ndarray]]:
    """Split `name` in order, padded to full batches with example 0, as `data.eval_batches`."""
    split, size = self.split(name), self.batch_size
    count = len(split.labels)
    padded = -(-count // size) * size
    indices = np.where(np.arange(padded) < count, np.arange(padded), 0)
    for start in range(0, padded, size):
      window = indices[start:start + size]
      yield {'features': split.features[window], 'label': split.labels[window],
             'mask': np.arange(start, start + size) < count}

  def _key(self, name: str) -> str:
    source = getattr(self._dataset, name)
    text = json.dumps(dict(self._key_parts, split=name, examples=data.examples_digest(source)),
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()

  def _load_or_compute(self, name: str) -> SplitFeatures:
    """From the workdir's cache file of the same key, or computed (and written)."""
    key = self._key(name)
    path = self._directory / f'{name}-{key[:16]}.npz'
    if path.exists():
      with np.load(path) as saved:
        if str(saved['key']) == key:
          logging.info('feature cache: %s features read from %s', name, path)
          dtype = jnp.dtype(str(saved['dtype']))
          return SplitFeatures(saved['features'].astype(dtype), saved['labels'])
    started = time.monotonic()
    computed = self._compute(getattr(self._dataset, name))
    logging.info('feature cache: %s features %s computed in %.1f s, written to %s', name,
                 computed.features.shape, time.monotonic() - started, path)
    if jax.process_index() == 0:
      self._write(path, name, key, computed)
    return computed

  def _compute(self, source) -> SplitFeatures:
    """The eval-mode features of `source`, batched and sharded as the eval batches."""
    c, parts = self._config, self._parts
    replicated = parallel.replicated(parallel.data_mesh())
    params, model_state = jax.device_put((parts.params, parts.model_state), replicated)
    features_of = jax.jit(lambda p, s, images: nnx.merge(parts.eval_graph, p, s).features(
        normalize(images, c.data.mean, c.data.std, jnp.dtype(c.model.dtype))))
    batches = data.eval_batches(source, c.data, global_batch_size=self.batch_size)
    features, labels = [], []
    for batch in parallel.prefetch_to_device(batches, self._sharding, c.data.prefetch):
      real = np.asarray(batch['mask'])
      features.append(np.asarray(features_of(params, model_state, batch['image']))[real])
      labels.append(np.asarray(batch['label'])[real])
    return SplitFeatures(np.concatenate(features), np.concatenate(labels).astype(np.int32))

  def _write(self, path: Path, name: str, key: str, split: SplitFeatures) -> None:
    """Atomically, in float32 (exact for bfloat16, which npz cannot hold), with the key and
    dtype; older files of the split (other keys) are removed."""
    self._directory.mkdir(parents=True, exist_ok=True)
    for stale in self._directory.glob(f'{name}-*.npz'):
      stale.unlink()
    temporary = path.with_name(f'{path.stem}.tmp{os.getpid()}.npz')
    np.savez(temporary, features=split.features.astype(np.float32), labels=split.labels,
             key=np.str_(key), dtype=np.str_(split.features.dtype.name))
    os.replace(temporary, path)


def _tree_sha256(*trees) -> str:
  """A sha256 of the arrays of `trees` (paths, dtypes, shapes and bytes)."""
  digest = hashlib.sha256()
  for tree in trees:
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
      array = np.asarray(leaf)
      digest.update(f'{finetune.path_string(path)}\0{array.dtype}\0{array.shape}'.encode())
      digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()
