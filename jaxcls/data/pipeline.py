"""Grain input pipelines: one epoch of train batches, or padded eval batches.

Everything is a `grain.MapDataset` up to the last step, so an epoch is a pure
function of (source, config, seed, epoch): resuming mid-epoch is a slice of
the batched data set, and each process computes the same global permutation
and takes its own interleaved share of it.
"""

from collections.abc import Iterator

from absl import flags
import grain
import numpy as np

from jaxcls.data import sampling, sources
from jaxcls.data import transforms
from jaxcls.errors import ConfigProblems, either


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Full global batches in one epoch; the remainder is dropped."""
  steps = num_examples // global_batch_size
  if steps == 0:
    raise ValueError(
        f'The split has {num_examples} examples, fewer than one batch of '
        f'{global_batch_size}; lower train.batch_size or enlarge the split.')
  return steps


def train_epoch_length(num_train: int, data_config) -> int:
  """Examples per train epoch: `data.epoch_examples`, or 0: the split's size."""
  return data_config.epoch_examples or num_train


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f'Global batch size {global_batch_size} is not divisible '
                     f'by the process count {process_count}.')
  return global_batch_size // process_count


def _epoch_seeds(seed: int, epoch: int) -> tuple[int, int, int]:
  """Independent (shuffle, augmentation, resized-crop) seeds for one epoch."""
  return tuple(int(s) for s in np.random.SeedSequence(
      [seed, epoch]).generate_state(3))


class _Reindexed:
  """Example `indices[i]` of `source` at position i (picklable for workers)."""

  def __init__(self, source, indices: np.ndarray):
    self._source = source
    self._indices = indices

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> dict:
    return self._source[int(self._indices[index])]


def _epoch_order(source, data_config, num_examples: int,
                 shuffle_seed: int) -> grain.MapDataset:
  """The epoch's examples in order: `data.sampler`, `data.epoch_examples`."""
  if data_config.sampler == 'balanced':
    labels = sampling.source_labels(source)
    indices = sampling.balanced_indices(labels, num_examples, shuffle_seed)
  elif data_config.sampler == 'uniform':
    if num_examples == len(source):
      return grain.MapDataset.source(source).shuffle(seed=shuffle_seed)
    indices = sampling.uniform_indices(len(source), num_examples, shuffle_seed)
  else:
    raise ValueError(f'data.sampler={data_config.sampler!r}: expected one of '
                     f'{sampling.SAMPLERS}')
  return grain.MapDataset.source(_Reindexed(source, indices))


def _to_iterator(ds: grain.MapDataset, data_config) -> Iterator[dict]:
  # Each thread prepares a whole batch, so the buffer holds at least one batch
  # per thread; otherwise threads beyond `prefetch` would sit idle.
  read_options = grain.ReadOptions(
      num_threads=data_config.num_threads,
      prefetch_buffer_size=max(data_config.prefetch, data_config.num_threads))
  it = ds.to_iter_dataset(read_options)
  if data_config.num_workers > 0:
    # Grain reads absl flags when it starts workers; outside `absl.app.run`
    # (tests, notebooks) they are unparsed, and their defaults are what we want.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=data_config.num_workers))
  return iter(it)


class _Positions:
  """Stands in for a source whose example i is the index i (labels kept for the sampler)."""

  def __init__(self, source):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> int:
    return index

  @property
  def labels(self) -> np.ndarray:
    return sampling.source_labels(self._source)


def epoch_order(source, data_config, *, global_batch_size: int, seed: int,
                epoch: int) -> np.ndarray:
  """The source indices of one train epoch, in the order `train_batches` reads them.

  [steps * B] int32: batch k is positions [k * B, (k + 1) * B). The on-device
  data set gathers its batches by these indices, so it sees the examples of
  the host pipeline in the same order.
  """
  num_examples = train_epoch_length(len(source), data_config)
  steps = steps_per_epoch(num_examples, global_batch_size)
  shuffle_seed = _epoch_seeds(seed, epoch)[0]
  order = _epoch_order(_Positions(source), data_config, num_examples, shuffle_seed)
  return np.asarray([order[i] for i in range(steps * global_batch_size)], np.int32)


def config_errors(data_config) -> list[str]:
  """What is wrong with `config.data`, but for its `augment` group (`device_augment`'s)."""
  c, p = data_config, ConfigProblems('data', data_config)
  p.extend(sources.config_errors(c))
  p.check(c.image_size >= 0, 'image_size', 'must be positive (or 0: automatic)')
  p.check(not (c.on_device and c.augment.random_resized_crop), 'on_device',
          'cannot be combined with data.augment.random_resized_crop=True (it crops the source '
          'image at full resolution, which the on-device set no longer holds)')
  p.check(c.resize_size == 0 or c.resize_size >= c.image_size, 'resize_size',
          'must be 0 or at least data.image_size (resize, then center-crop)')
  p.check(len(c.mean) in (0, 3), 'mean', 'expected 3 channel means (or none: automatic)')
  p.check(len(c.std) in (0, 3) and all(s > 0 for s in c.std), 'std',
          'expected 3 positive channel stds (or none: automatic)')
  interpolations = tuple(transforms.RESAMPLING)
  p.check(c.interpolation in interpolations, 'interpolation',
          f'expected one of {interpolations} (or empty: automatic)')
  p.check(c.sampler in sampling.SAMPLERS, 'sampler', f'expected {either(sampling.SAMPLERS)}')
  p.check(c.epoch_examples >= 0, 'epoch_examples', 'must be >= 0 (0: the train split\'s size)')
  p.check(c.num_workers >= 0, 'num_workers', 'must be >= 0')
  p.check(c.num_threads >= 1, 'num_threads', 'must be >= 1')
  p.check(c.prefetch >= 1, 'prefetch', 'must be >= 1')
  return p


def train_batches(source, data_config, *, global_batch_size: int, seed: int,
                  epoch: int, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict]:
  """Yields this process's batches k = start_step, ... of one train epoch.

  Batch k of every process together holds positions [k * B, (k + 1) * B) of
  the epoch's global order (B = global_batch_size), whatever the number of
  processes, so a run can resume on a different number of hosts. The order
  is a shuffle of the split, or `data.epoch_examples` drawn by `data.sampler`
  (see `jaxcls.data.sampling`); the epoch has
  `steps_per_epoch(train_epoch_length(len(source), data_config), B)` steps.
  """
  num_examples = train_epoch_length(len(source), data_config)
  steps = steps_per_epoch(num_examples, global_batch_size)
  local_batch_size = _local_batch_size(global_batch_size, process_count)
  shuffle_seed, augment_seed, crop_seed = _epoch_seeds(seed, epoch)
  ds = _epoch_order(source, data_config, num_examples, shuffle_seed)
  ds = ds[:steps * global_batch_size]
  # Random maps before the per-process slice, so an example's augmentation
  # depends on its position in the global order, not on the process count.
  augment = data_config.augment
  if augment.random_resized_crop:
    ds = ds.random_map(
        transforms.RandomResizedCrop(
            data_config.image_size, tuple(augment.random_resized_crop_scale),
            tuple(augment.random_resized_crop_ratio),
            data_config.get('interpolation') or 'bilinear'),
        seed=crop_seed)
  else:
    ds = ds.map(transforms.Resize.from_config(data_config))
  ds = ds.random_map(
      transforms.Augment(augment.random_crop_padding, augment.horizontal_flip),
      seed=augment_seed)
  ds = ds[process_index::process_count]
  ds = ds.batch(local_batch_size, drop_remainder=True)
  return _to_iterator(ds[start_step:], data_config)


class _Padded:
  """`source` extended to `length` with copies of example 0, plus a mask."""

  def __init__(self, source, length: int):
    self._source = source
    self._length = length

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict:
    real = index < len(self._source)
    example = self._source[index if real else 0]
    return {'image': example['image'], 'label': example['label'],
            'mask': np.bool_(real)}


def eval_batches(source, data_config, *, global_batch_size: int,
                 process_index: int = 0, process_count: int = 1
                 ) -> Iterator[dict]:
  """Yields batches of `source` in order, padded to full batches.

  Every process yields the same number of full batches (collectives need
  equal shapes); padding examples have mask False, and over all processes
  each real example appears exactly once with mask True.
  """
  local_batch_size = _local_batch_size(global_batch_size, process_count)
  if len(source) == 0:  # E.g. data.split gave val no examples.
    return iter(())
  num_batches = -(-len(source) // global_batch_size)
  ds = grain.MapDataset.source(_Padded(source, num_batches * global_batch_size))
  ds = ds.map(transforms.Resize.from_config(data_config))
  ds = ds[process_index::process_count]
  ds = ds.batch(local_batch_size, drop_remainder=True)
  return _to_iterator(ds, data_config)
