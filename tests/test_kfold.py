"""Specification of stratified k-fold cross-validation (`data.num_folds`, `data.fold`)."""

import numpy as np
import pytest

from jaxcls.config import ConfigError, validate
from jaxcls.data import load_dataset, splits

# 3 classes of 50, 30 and 20 examples.
LABELS = np.repeat([0, 1, 2], [50, 30, 20])


def test_folds_are_disjoint_and_cover_the_pool():
  folds = splits.stratified_folds(LABELS, 5, seed=0)
  together = np.concatenate(folds)
  assert len(together) == len(set(together.tolist())) == len(LABELS)


def test_each_fold_holds_each_class_in_proportion():
  for fold in splits.stratified_folds(LABELS, 5, seed=0):
    assert np.bincount(LABELS[fold], minlength=3).tolist() == [10, 6, 4]


def test_folds_are_deterministic_given_the_seed():
  first = splits.stratified_folds(LABELS, 4, seed=3)
  again = splits.stratified_folds(LABELS, 4, seed=3)
  other = splits.stratified_folds(LABELS, 4, seed=4)
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_fold_vals_partition_train_plus_val_and_test_stays_fixed():
  carved = [splits.carve_fold(LABELS, (0.8, 0.1, 0.1), 0, ('val', 'test'), 5, k)
            for k in range(5)]
  test = carved[0]['test']
  assert all(np.array_equal(c['test'], test) for c in carved)
  vals = np.concatenate([c['val'] for c in carved])
  pool = np.setdiff1d(np.arange(len(LABELS)), test)
  assert sorted(vals.tolist()) == pool.tolist()  # Disjoint, and together train + val.
  for c in carved:
    assert np.intersect1d(c['train'], c['val']).size == 0
    assert np.intersect1d(c['train'], test).size == 0
    assert sorted(np.concatenate([c['train'], c['val']]).tolist()) == pool.tolist()


def test_digits_fold_is_recorded_and_stratified(config, tmp_path):
  config.data.num_folds, config.data.fold = 3, 1
  dataset = load_dataset(config.data, str(tmp_path))
  val_counts = np.bincount([dataset.val[i]['label'] for i in range(len(dataset.val))])
  assert val_counts.max() - val_counts.min() <= 3  # 10 classes of ~160 in thirds: ~54 each.
  assert len(dataset.train) + len(dataset.val) + len(dataset.test) == 1797
  assert len(dataset.val) in (539, 540)
  config.data.fold = 2
  with pytest.raises(ValueError, match='splits.json was written for'):
    load_dataset(config.data, str(tmp_path))  # The workdir's record is for fold 1.


@pytest.mark.parametrize('num_folds, fold, field', [(1, 0, 'data.num_folds'),
                                                    (3, 3, 'data.fold'), (0, 1, 'data.fold')])
def test_invalid_folds_name_the_field(config, num_folds, fold, field):
  config.data.num_folds, config.data.fold = num_folds, fold
  with pytest.raises(ConfigError, match=f'config.{field}='):
    validate(config)
