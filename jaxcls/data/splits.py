"""Stratified train/val/test splits, k-fold, and their record in WORKDIR/splits.json.

A split is drawn once and written down: a resumed run (or an evaluation run in
the same workdir) must see exactly the examples the first run held out, even if
the code that draws splits changes later.

For k-fold cross-validation the test split is drawn as usual and the rest (train
+ val) is divided into `num_folds` stratified parts: fold k validates on part k
and trains on the others, so the folds' val splits are disjoint and together
cover train + val, and every fold is tested on the same test split.
"""

import json
import numbers
import os

import numpy as np

SPLIT_NAMES = ('train', 'val', 'test')


def parse_split(split) -> tuple[str, tuple]:
  """Returns ('fractions' | 'counts', values) for `data.split`, or raises.

  Integers mean example counts and anything else fractions, so that
  (40000, 10000, 10000) and (0.8, 0.1, 0.1) both read naturally.
  """
  try:
    values = tuple(split)
  except TypeError:
    values = None
  if values is None or len(values) != 3 or not all(
      isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
    raise ValueError(
        f'data.split must be 3 numbers (train, val, test); got {split!r}.')
  if any(v < 0 for v in values):
    raise ValueError(f'data.split must not be negative; got {split!r}.')
  if all(isinstance(v, numbers.Integral) for v in values):
    return 'counts', tuple(int(v) for v in values)
  if abs(sum(values) - 1.0) > 1e-6:
    raise ValueError(
        f'data.split fractions must sum to 1 (or all be integer counts); got '
        f'{split!r}, which sums to {sum(values)}.')
  return 'fractions', tuple(float(v) for v in values)


def _split_sizes(num_examples: int, split) -> tuple[int, int, int]:
  """Totals per split: exact for counts, nearest for fractions."""
  kind, values = parse_split(split)
  if kind == 'counts':
    if sum(values) > num_examples:
      raise ValueError(
          f'data.split={split!r} asks for {sum(values)} examples but the pool '
          f'has only {num_examples}.')
    return values
  val = round(values[1] * num_examples)
  test = min(round(values[2] * num_examples), num_examples - val)
  return num_examples - val - test, val, test


def _apportion(total: int, weights: np.ndarray, capacity: np.ndarray):
  """Divides `total` in proportion to `weights` without exceeding `capacity`.

  Largest-remainder rounding: each part gets the floor of its quota, then the
  leftover units go to the largest fractional parts, so the parts sum to
  `total` exactly and each is within one of its quota where capacity allows.
  """
  quota = total * weights / max(weights.sum(), 1)
  parts = np.minimum(np.floor(quota).astype(np.int64), capacity)
  order = np.lexsort((np.arange(len(quota)), -(quota - parts)))
  while parts.sum() < total:
    for i in order:
      if parts.sum() == total:
        break
      if parts[i] < capacity[i]:
        parts[i] += 1
  return parts


def stratified_split(labels: np.ndarray, split, seed: int):
  """Returns sorted (train, val, test) index arrays into `labels`.

  Every class is divided in the proportions of the split totals, so a rare
  class is not left out of val or test by chance. `split` holds fractions
  summing to 1 or example counts (whose sum may be below the pool size; the
  rest is left unused).
  """
  labels = np.asarray(labels)
  totals = _split_sizes(len(labels), split)
  classes, class_sizes = np.unique(labels, return_counts=True)
  rng = np.random.default_rng(seed)
  # Val and test first, so that train takes the exact remainder per class.
  remaining = class_sizes.copy()
  per_class = {}
  for name, total in (('val', totals[1]), ('test', totals[2]),
                      ('train', totals[0])):
    per_class[name] = _apportion(total, class_sizes, remaining)
    remaining = remaining - per_class[name]
  picked = {name: [] for name in SPLIT_NAMES}
  for c, label in enumerate(classes):
    members = rng.permutation(np.flatnonzero(labels == label))
    start = 0
    for name in ('val', 'test', 'train'):
      count = per_class[name][c]
      picked[name].append(members[start:start + count])
      start += count
  return tuple(
      np.sort(np.concatenate(picked[name] or [np.zeros(0, np.int64)]))
      .astype(np.int64) for name in SPLIT_NAMES)


def stratified_folds(labels: np.ndarray, num_folds: int, seed: int) -> list[np.ndarray]:
  """`num_folds` disjoint sorted index arrays covering `labels`, each class spread evenly.

  Each class's examples, in a random order drawn from `seed`, are dealt to the
  folds in turn, continuing where the previous class stopped: every fold gets
  within one example of each class's share and within one of the others' size.
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  dealt = np.concatenate([rng.permutation(np.flatnonzero(labels == label))
                          for label in np.unique(labels)] or [np.zeros(0, np.int64)])
  return [np.sort(dealt[k::num_folds]).astype(np.int64) for k in range(num_folds)]


def carve_fold(labels: np.ndarray, split, seed: int, missing: tuple[str, ...],
               num_folds: int, fold: int):
  """k-fold `carve_splits`: test as `split` draws it (when missing), then val is
  fold `fold` of the `num_folds` stratified parts of the rest."""
  if 'val' not in missing:
    raise ValueError(
        f'data.num_folds={num_folds}: k-fold draws val from the training pool, but '
        'this source has its own val split.')
  kind, values = parse_split(split)
  # Val's share goes to the pool that the folds divide.
  pool_and_test = (values[0] + values[1], type(values[1])(0), values[2])
  if 'test' in missing:
    pool, _, test = stratified_split(labels, pool_and_test, seed)
  else:
    pool, test = np.arange(len(labels)), None
  parts = stratified_folds(np.asarray(labels)[pool], num_folds, seed)
  carved = {'train': np.sort(pool[np.concatenate(
      [p for k, p in enumerate(parts) if k != fold])]), 'val': pool[parts[fold]]}
  if test is not None:
    carved['test'] = test
  return carved


def carve_splits(labels: np.ndarray, split, seed: int,
                 missing: tuple[str, ...]):
  """Makes the `missing` splits from a training pool with these `labels`.

  Returns {'train': indices, <each missing split>: indices} into the pool.
  A split the source already has keeps its own examples, so its entry in
  `split` is ignored and the other entries are renormalised: with only val
  missing, val takes val / (train + val) of the pool (or its count).
  """
  kind, values = parse_split(split)
  keep = [True] + [name in missing for name in SPLIT_NAMES[1:]]
  wanted = tuple(v if k else type(v)(0) for v, k in zip(values, keep))
  if kind == 'fractions':
    total = sum(wanted)
    if total <= 0:
      raise ValueError(
          f'data.split={split!r} leaves nothing for the splits made from the '
          f'training pool ({", ".join(("train",) + missing)}).')
    wanted = tuple(v / total for v in wanted)
  indices = stratified_split(labels, wanted, seed)
  return {name: idx for name, idx, k in zip(SPLIT_NAMES, indices, keep) if k}


def load_or_carve(labels, split, seed, missing, *, source: str,
                  workdir: str | None, keys=None, num_folds: int = 0, fold: int = 0):
  """`carve_splits` (`carve_fold` with `num_folds` >= 2), or the split recorded
  in WORKDIR/splits.json.

  `keys` (optional, one string per pool example, e.g. relative file paths) is
  what gets recorded instead of indices, so a folder split survives files
  being added to the folder. Returns {split name: indices into the pool}.
  """
  path = os.path.join(workdir, 'splits.json') if workdir else None
  if path and os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
    expected = {'source': source, 'seed': seed, 'split': list(split)}
    if num_folds:
      expected.update(num_folds=num_folds, fold=fold)
    found = {k: record.get(k) for k in expected}
    if found != expected:
      raise ValueError(
          f'{path} was written for {found}, but this run has {expected}. '
          'Use a fresh workdir or the original data config.')
    return {name: _to_indices(record[name], keys, path)
            for name in record['splits']}
  carved = (carve_fold(labels, split, seed, missing, num_folds, fold) if num_folds
            else carve_splits(labels, split, seed, missing))
  if path:
    os.makedirs(workdir, exist_ok=True)
    record = {'source': source, 'seed': seed, 'split': list(split),
              'splits': list(carved)}
    if num_folds:
      record.update(num_folds=num_folds, fold=fold)
    for name, idx in carved.items():
      record[name] = ([keys[i] for i in idx] if keys is not None
                      else idx.tolist())
    # Atomic: a crash never leaves half a split. The name is per process, as
    # every process of a multi-host run writes the same (deterministic) file.
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
      json.dump(record, f)
    os.replace(tmp, path)
  return carved


def _to_indices(entries, keys, path):
  if keys is None:
    return np.asarray(entries, np.int64)
  position = {key: i for i, key in enumerate(keys)}
  missing = [e for e in entries if e not in position]
  if missing:
    raise ValueError(f'{path} lists {len(missing)} files that are gone, e.g. '
                     f'{missing[0]!r}.')
  return np.asarray([position[e] for e in entries], np.int64)
