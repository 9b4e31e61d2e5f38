"""Specification of jaxcls.data.splits: stratified, exact, recorded splits."""

import json

import numpy as np
import pytest

from jaxcls.config import default_config, resolve_automatic_fields
from jaxcls.data import splits
from jaxcls.data import sources


def data_config(**overrides):
  config = resolve_automatic_fields(default_config()).data
  config.update(overrides)
  return config


# 1,000 examples in classes of 500, 300 and 200, shuffled.
LABELS = np.random.default_rng(1).permutation(
    np.repeat(np.arange(3), [500, 300, 200]))


def test_each_class_is_divided_in_the_split_proportions():
  train, val, test = splits.stratified_split(LABELS, (0.8, 0.1, 0.1), seed=0)
  for indices, fraction in ((train, 0.8), (val, 0.1), (test, 0.1)):
    counts = np.bincount(LABELS[indices], minlength=3)
    np.testing.assert_array_equal(counts, np.array([500, 300, 200]) * fraction)


def test_rare_class_is_stratified_up_to_rounding():
  labels = np.repeat(np.arange(4), [97, 51, 13, 7])
  train, val, test = splits.stratified_split(labels, (0.7, 0.2, 0.1), seed=3)
  for indices, fraction in ((train, 0.7), (val, 0.2), (test, 0.1)):
    counts = np.bincount(labels[indices], minlength=4)
    expected = np.bincount(labels, minlength=4) * fraction
    assert np.all(np.abs(counts - expected) <= 1), (counts, expected)


def test_splits_are_disjoint_and_cover_the_pool_for_fractions():
  parts = splits.stratified_split(LABELS, (0.6, 0.25, 0.15), seed=0)
  joined = np.concatenate(parts)
  assert len(joined) == len(set(joined.tolist())) == len(LABELS)


def test_fraction_totals_are_the_nearest_integers():
  labels = np.arange(1797) % 10
  sizes = [len(p) for p in splits.stratified_split(labels, (0.8, 0.1, 0.1), 0)]
  assert sizes == [1437, 180, 180]


def test_counts_give_exact_sizes_and_leave_the_rest_unused():
  train, val, test = splits.stratified_split(LABELS, (400, 100, 50), seed=0)
  assert (len(train), len(val), len(test)) == (400, 100, 50)
  assert len(set(np.concatenate([train, val, test]).tolist())) == 550
  np.testing.assert_array_equal(np.bincount(LABELS[val]), [50, 30, 20])


def test_same_seed_same_split_other_seed_other_split():
  first = splits.stratified_split(LABELS, (0.8, 0.1, 0.1), seed=7)
  again = splits.stratified_split(LABELS, (0.8, 0.1, 0.1), seed=7)
  other = splits.stratified_split(LABELS, (0.8, 0.1, 0.1), seed=8)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[1], other[1])


def test_val_is_carved_from_train_in_proportion_when_only_val_is_missing():
  pool = LABELS[:900]
  parts = splits.carve_splits(pool, (0.8, 0.1, 0.1), seed=0, missing=('val',))
  assert sorted(parts) == ['train', 'val']
  assert (len(parts['train']), len(parts['val'])) == (800, 100)
  assert not set(parts['train'].tolist()) & set(parts['val'].tolist())


def test_val_count_is_taken_from_train_when_only_val_is_missing():
  # The test count is the source's own business and may exceed the pool.
  parts = splits.carve_splits(LABELS, (700, 200, 5000), 0, missing=('val',))
  assert (len(parts['train']), len(parts['val'])) == (700, 200)


@pytest.mark.parametrize('bad', [
    (0.8, 0.2),
    (0.8, 0.1, 0.1, 0.0),
    (0.9, 0.2, -0.1),
    (0.5, 0.3, 0.1),
    (600, 300, 200),
    'abc',
    (0.8, None, 0.1),
])
def test_bad_split_raises_naming_the_field(bad):
  with pytest.raises(ValueError, match='data.split') as info:
    splits.stratified_split(LABELS, bad, seed=0)
  assert repr(bad) in str(info.value) or str(bad) in str(info.value)


def test_split_is_written_to_the_workdir(tmp_path):
  dataset = sources.load_dataset(data_config(), str(tmp_path))
  with open(tmp_path / 'splits.json') as f:
    record = json.load(f)
  assert record['source'] == 'digits' and record['seed'] == 0
  assert sorted(record['val']) == record['val']
  labels = np.asarray(dataset.val.labels)
  expected = sources.load_dataset(data_config(), None).val.labels
  np.testing.assert_array_equal(labels, expected)
  assert len(record['train']) + len(record['val']) + len(record['test']) == 1797


def test_existing_split_file_is_reused(tmp_path):
  sources.load_dataset(data_config(), str(tmp_path))
  path = tmp_path / 'splits.json'
  record = json.loads(path.read_text())
  # Move one example from train to val: a reused file must show the move.
  moved = record['train'].pop()
  record['val'].append(moved)
  path.write_text(json.dumps(record))
  dataset = sources.load_dataset(data_config(), str(tmp_path))
  assert (len(dataset.train), len(dataset.val)) == (1436, 181)


def test_split_file_of_another_source_is_an_error(tmp_path):
  sources.load_dataset(data_config(), str(tmp_path))
  path = tmp_path / 'splits.json'
  record = json.loads(path.read_text())
  record['source'] = 'folder:/elsewhere'
  path.write_text(json.dumps(record))
  with pytest.raises(ValueError, match='splits.json'):
    sources.load_dataset(data_config(), str(tmp_path))
