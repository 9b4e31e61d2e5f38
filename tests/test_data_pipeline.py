"""Specification of jaxcls.data.pipeline: epochs, resumption, hosts, eval."""


import numpy as np
import pytest

from jaxcls.config import default_config, resolve_automatic_fields
from jaxcls.data import pipeline
from jaxcls.data import sources
from jaxcls.data import transforms


def data_config(**overrides):
  config = resolve_automatic_fields(default_config()).data
  config.update(overrides)
  return config


def id_source(count, size=32):
  """Random images whose label is the example's index, to track examples."""
  images = np.random.default_rng(0).integers(
      0, 256, (count, size, size, 3), dtype=np.uint8)
  return sources.ArraySource(images, np.arange(count))


def train_epoch(source, config, **kwargs):
  kwargs = {'global_batch_size': 8, 'seed': 0, 'epoch': 0, **kwargs}
  return list(pipeline.train_batches(source, config, **kwargs))


def test_train_batches_have_the_configured_shape_and_dtype():
  config = data_config(image_size=16)
  batches = train_epoch(id_source(100, size=24), config, global_batch_size=16)
  assert len(batches) == 100 // 16
  for batch in batches:
    assert batch['image'].shape == (16, 16, 16, 3)
    assert batch['image'].dtype == np.uint8
    assert batch['label'].shape == (16,) and batch['label'].dtype == np.int32


def test_an_epoch_sees_distinct_examples_and_drops_the_remainder():
  labels = np.concatenate([b['label'] for b in train_epoch(id_source(43),
                                                           data_config())])
  assert len(labels) == 40 and len(set(labels.tolist())) == 40


def test_same_seed_and_epoch_give_identical_batches():
  source, config = id_source(40), data_config()
  first, again = train_epoch(source, config), train_epoch(source, config)
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_another_epoch_or_seed_gives_another_order():
  source, config = id_source(40), data_config()
  def order(**kwargs):
    return np.concatenate([b['label'] for b in train_epoch(source, config,
                                                           **kwargs)])
  assert not np.array_equal(order(epoch=0), order(epoch=1))
  assert not np.array_equal(order(seed=0), order(seed=1))


def test_start_step_resumes_with_the_tail_of_the_same_epoch():
  source, config = id_source(40), data_config()
  full = train_epoch(source, config, epoch=3)
  tail = train_epoch(source, config, epoch=3, start_step=2)
  assert len(tail) == len(full) - 2
  for a, b in zip(full[2:], tail, strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_processes_split_each_global_batch_disjointly():
  source, config = id_source(47), data_config()
  single = train_epoch(source, config, global_batch_size=8)
  shards = [train_epoch(source, config, global_batch_size=8, process_index=p,
                        process_count=2) for p in range(2)]
  assert len(shards[0]) == len(shards[1]) == len(single) == 5
  for step, global_batch in enumerate(single):
    local = [shard[step] for shard in shards]
    assert all(b['image'].shape[0] == 4 for b in local)
    labels = [set(b['label'].tolist()) for b in local]
    assert not labels[0] & labels[1]
    assert labels[0] | labels[1] == set(global_batch['label'].tolist())


def test_steps_per_epoch_rejects_a_split_smaller_than_a_batch():
  assert pipeline.steps_per_epoch(100, 16) == 6
  with pytest.raises(ValueError, match='fewer than one batch'):
    pipeline.steps_per_epoch(10, 16)


def test_eval_covers_every_example_once_across_processes():
  source, config = id_source(37), data_config()
  seen, padding = [], 0
  counts = []
  for process in range(2):
    batches = list(pipeline.eval_batches(
        source, config, global_batch_size=8, process_index=process,
        process_count=2))
    counts.append(len(batches))
    for batch in batches:
      assert batch['image'].shape == (4, 32, 32, 3)
      assert batch['mask'].dtype == bool
      seen.extend(batch['label'][batch['mask']].tolist())
      padding += int((~batch['mask']).sum())
  assert counts == [5, 5]
  assert sorted(seen) == list(range(37))
  assert padding == 3


def test_eval_of_an_empty_split_yields_nothing():
  empty = sources.ArraySource(np.zeros((0, 32, 32, 3), np.uint8), [])
  assert not list(pipeline.eval_batches(empty, data_config(),
                                        global_batch_size=8))


def test_eval_is_in_order_and_not_augmented():
  source = id_source(16)
  config = data_config()
  config.augment.horizontal_flip = True
  batches = list(pipeline.eval_batches(source, config, global_batch_size=16))
  np.testing.assert_array_equal(batches[0]['image'], source.images)
  assert batches[0]['mask'].all()


def offsets_matching(output, image, padding):
  """The (dy, dx, flipped) windows of padded `image` that equal `output`."""
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  size = image.shape[0]
  found = []
  for dy in range(2 * padding + 1):
    for dx in range(2 * padding + 1):
      window = padded[dy:dy + size, dx:dx + size]
      found += [(dy, dx, False)] * np.array_equal(window, output)
      found += [(dy, dx, True)] * np.array_equal(window[:, ::-1], output)
  return found


def test_random_crop_and_flip_stay_within_the_padding():
  # Distinct pixel values make every window of the padded image unique.
  image = np.arange(16 * 16 * 3, dtype=np.int64).reshape(16, 16, 3) % 251 + 1
  image = image.astype(np.uint8)
  source = sources.ArraySource(np.stack([image] * 64), np.zeros(64))
  config = data_config(image_size=16)
  config.augment.random_crop_padding = 3
  config.augment.horizontal_flip = True
  outputs = np.concatenate([b['image'] for b in train_epoch(
      source, config, global_batch_size=16)])
  windows = []
  for output in outputs:
    found = offsets_matching(output, image, padding=3)
    assert len(found) == 1, found
    windows.append(found[0])
  assert len({w[:2] for w in windows}) > 10  # Crops actually vary...
  assert {w[2] for w in windows} == {False, True}  # ...and so do flips.


def test_resize_keeps_aspect_ratio_then_center_crops():
  image = np.zeros((20, 40, 3), np.uint8)
  image[:, 20:] = 255  # Left half black, right half white.
  out = transforms.resize(image, image_size=32, resize_size=32)
  assert out.shape == (32, 32, 3)
  # 20x40 -> 32x64, center 32 columns: 16 black then 16 white.
  assert out[:, :15].max() == 0 and out[:, 17:].min() == 255


def test_resize_without_resize_size_stretches_to_the_square():
  out = transforms.resize(np.zeros((20, 40, 3), np.uint8), 32)
  assert out.shape == (32, 32, 3)


def test_worker_processes_give_the_same_batches():
  source = id_source(32)
  expected = train_epoch(source, data_config(), epoch=2)
  got = train_epoch(source, data_config(num_workers=2), epoch=2)
  for a, b in zip(expected, got, strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
