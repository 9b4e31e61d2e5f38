"""ImageNet-1k's classes in the order every 1000-way head uses: sorted WordNet ids.

Read from the installed tensorflow-datasets package (a dependency), so nothing
is downloaded and no class list is copied into jaxcls.
"""

import functools
from importlib import resources


@functools.cache
def wnids() -> tuple[str, ...]:
  """The 1000 WordNet ids ('n01440764', ...), index = class of a 1000-way ImageNet head."""
  text = resources.files('tensorflow_datasets').joinpath(
      'datasets/imagenet2012/labels.txt').read_text()
  ids = tuple(line.strip() for line in text.splitlines() if line.strip())
  if len(ids) != 1000 or list(ids) != sorted(ids):
    raise RuntimeError(f'tensorflow_datasets imagenet2012/labels.txt: expected 1000 sorted '
                       f'WordNet ids, got {len(ids)}')
  return ids


@functools.cache
def class_names() -> tuple[str, ...]:
  """Short English names in class order ('tench', 'goldfish', ...)."""
  from tensorflow_datasets.datasets.siscore.labels import IMAGENET_LABELS_LIST  # pylint: disable=g-import-not-at-top
  return tuple(name.split(',')[0].strip() for name in IMAGENET_LABELS_LIST)
