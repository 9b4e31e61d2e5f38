"""Which train examples an epoch holds; class counts for per-class loss weights.

The index functions are pure: the same labels, length and seed give the same
order, so an epoch can be rebuilt (and resumed mid-way) from the seed alone.
"""

import numpy as np

SAMPLERS = ('uniform', 'balanced')


def source_labels(source) -> np.ndarray:
  """The label of every example of a source, in order.

  Array and folder sources hold them; others (TFDS) are read example by
  example, which decodes every image once.
  """
  labels = getattr(source, 'labels', None)
  if labels is None:
    labels = [source[i]['label'] for i in range(len(source))]
  return np.asarray(labels)


def uniform_indices(num_source: int, num_examples: int,
                    seed: int) -> np.ndarray:
  """`num_examples` indices: fresh permutations of the source, concatenated.

  Every example appears floor or ceil(num_examples / num_source) times.
  """
  rng = np.random.default_rng(seed)
  repeats = -(-num_examples // num_source)
  cycled = np.concatenate([rng.permutation(num_source) for _ in range(repeats)])
  return cycled[:num_examples]


def balanced_indices(labels, num_examples: int, seed: int) -> np.ndarray:
  """`num_examples` indices in random order, every class present equally often.

  The classes that occur in `labels` share the positions equally (the
  remainder goes to randomly chosen classes, one each), and each class fills
  its positions by cycling through its examples in fresh random orders, so
  a minority class repeats its examples as evenly as possible and a majority
  class shows a random subset. Any window of the result, e.g. a batch, is
  class-balanced in expectation.
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  if classes.size == 0:
    raise ValueError('Cannot balance classes of an empty split.')
  # Position i goes to class i mod K of a random class order, then shuffled.
  class_order = rng.permutation(classes.size)
  slot_classes = rng.permutation(
      class_order[np.arange(num_examples) % classes.size])
  indices = np.empty(num_examples, np.int64)
  for position, label in enumerate(classes):
    members = np.flatnonzero(labels == label)
    slots = np.flatnonzero(slot_classes == position)
    repeats = -(-slots.size // members.size)
    cycled = np.concatenate([rng.permutation(members) for _ in range(repeats)])
    indices[slots] = cycled[:slots.size]
  return indices


def class_counts(labels, num_classes: int) -> np.ndarray:
  """Examples per class, for `losses.class_weights_from_counts`."""
  return np.bincount(np.asarray(labels, np.int64), minlength=num_classes)
