"""Specification of the class-balanced sampler and epoch length (class weights: test_losses.py)."""

import numpy as np
import pytest

from jaxcls.config import default_config, resolve_automatic_fields
from jaxcls.data import pipeline
from jaxcls.data import sampling
from jaxcls.data import sources


@pytest.fixture(scope='module')
def imbalanced_digits():
  """Real digits, 10:1 imbalanced: all of digits 0-4, a tenth of 5-9 (16x16 to keep it quick)."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  rng = np.random.default_rng(0)
  keep = np.concatenate([
      np.flatnonzero(digits.target == label)[:170 if label < 5 else 17] for label in range(10)])
  keep = rng.permutation(keep)
  images = np.round(digits.images[keep] * (255 / 16)).astype(np.uint8)
  images = np.repeat(np.kron(images, np.ones((2, 2), np.uint8))[..., None], 3, axis=-1)
  return sources.ArraySource(images, digits.target[keep])


def data_config(**overrides):
  config = resolve_automatic_fields(default_config()).data
  config.update({'image_size': 16, 'sampler': 'balanced', **overrides})
  config.augment.random_crop_padding = 0
  return config


def labels_of(batches):
  return np.concatenate([b['label'] for b in batches])


def epoch(source, config, **kwargs):
  kwargs = {'global_batch_size': 50, 'seed': 0, 'epoch': 0, **kwargs}
  return list(pipeline.train_batches(source, config, **kwargs))


def test_balanced_epoch_has_every_class_equally_often_on_a_10_to_1_set(imbalanced_digits):
  counts = np.bincount(imbalanced_digits.labels, minlength=10)
  assert counts.max() / counts.min() == 10
  labels = labels_of(epoch(imbalanced_digits, data_config()))
  frequencies = np.bincount(labels, minlength=10) / len(labels)
  np.testing.assert_allclose(frequencies, 0.1, rtol=0.05)


def test_balanced_batches_are_class_balanced_in_expectation(imbalanced_digits):
  batches = epoch(imbalanced_digits, data_config(), global_batch_size=50)
  per_batch = np.stack([np.bincount(b['label'], minlength=10) for b in batches])
  # Chi-square of the pooled counts of the first half of the epoch against
  # uniform: far below the 99.9% point of chi2(9) (27.9).
  first_half = per_batch[:len(per_batch) // 2].sum(0)
  expected = first_half.sum() / 10
  assert ((first_half - expected) ** 2 / expected).sum() < 27.9
  # Each batch mixes classes rather than running through them in blocks.
  assert (np.count_nonzero(per_batch, axis=1) >= 6).all()


def test_minority_examples_repeat_evenly_and_majority_ones_are_subsampled(imbalanced_digits):
  indices = sampling.balanced_indices(imbalanced_digits.labels, 1000, seed=0)
  seen = np.bincount(indices, minlength=len(imbalanced_digits))
  minority = imbalanced_digits.labels >= 5
  # 100 slots per class: each of a minority class's 17 examples 5 or 6 times,
  # 100 distinct examples of each 170-example majority class once.
  assert set(seen[minority].tolist()) <= {5, 6}
  assert set(seen[~minority].tolist()) <= {0, 1} and seen[~minority].sum() == 500


def test_balanced_order_is_deterministic_and_differs_by_epoch_and_seed(imbalanced_digits):
  config = data_config()
  first = labels_of(epoch(imbalanced_digits, config, epoch=2))
  np.testing.assert_array_equal(labels_of(epoch(imbalanced_digits, config, epoch=2)), first)
  assert not np.array_equal(labels_of(epoch(imbalanced_digits, config, epoch=3)), first)
  assert not np.array_equal(labels_of(epoch(imbalanced_digits, config, epoch=2, seed=1)), first)


def test_balanced_epoch_resumes_mid_epoch_with_the_same_batches(imbalanced_digits):
  config = data_config()
  full = epoch(imbalanced_digits, config, epoch=1)
  tail = epoch(imbalanced_digits, config, epoch=1, start_step=5)
  assert len(tail) == len(full) - 5
  for a, b in zip(full[5:], tail, strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_epoch_examples_sets_the_epoch_length_and_steps(imbalanced_digits):
  for sampler in ('balanced', 'uniform'):
    config = data_config(sampler=sampler, epoch_examples=420)
    assert pipeline.train_epoch_length(len(imbalanced_digits), config) == 420
    batches = epoch(imbalanced_digits, config, global_batch_size=50)
    assert len(batches) == pipeline.steps_per_epoch(420, 50) == 8
  config = data_config(epoch_examples=0)
  assert pipeline.train_epoch_length(len(imbalanced_digits), config) == len(imbalanced_digits)


def test_uniform_epochs_longer_than_the_split_repeat_every_example_evenly():
  indices = sampling.uniform_indices(10, 35, seed=0)
  assert set(np.bincount(indices, minlength=10).tolist()) == {3, 4}
  assert sorted(indices[:10]) == list(range(10))  # Whole permutations first.


def test_uniform_sampler_at_the_split_size_keeps_the_plain_shuffle(imbalanced_digits):
  config = data_config(sampler='uniform')
  shuffled = epoch(imbalanced_digits, config)
  labels = labels_of(shuffled)
  assert len(labels) == len(imbalanced_digits) // 50 * 50
  config.epoch_examples = len(imbalanced_digits)
  np.testing.assert_array_equal(labels_of(epoch(imbalanced_digits, config)), labels)
