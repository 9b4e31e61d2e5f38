"""Random-access example sources: digits, TFDS and image folders.

Every split is a plain object with `__len__` and `__getitem__(i)` returning
{'image': uint8 [H, W, 3], 'label': int32 scalar}, which is all
`grain.MapDataset.source` needs. Folder images are decoded in `__getitem__`,
so the decoding runs in Grain's threads and worker processes, not at load.
"""

import dataclasses
import os

import numpy as np
from PIL import Image, ImageOps

from jaxcls.data import splits

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
_VAL_NAMES = ('val', 'valid', 'validation')


@dataclasses.dataclass(frozen=True)
class Dataset:
  """The class names and the three splits of one data set."""
  class_names: tuple[str, ...]
  train: object
  val: object
  test: object


def to_rgb(image: np.ndarray) -> np.ndarray:
  """[H, W], [H, W, 1] or [H, W, 4] uint8 -> [H, W, 3] uint8."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.ascontiguousarray(image[..., :3], dtype=np.uint8)


class ArraySource:
  """Examples held in memory as a uint8 [N, H, W, 3] array."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images = images
    self.labels = np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict:
    return {'image': self.images[index], 'label': self.labels[index]}


class ImageFileSource:
  """JPEG/PNG files, decoded to RGB on access with EXIF orientation applied."""

  def __init__(self, paths, labels):
    self.paths = list(paths)
    self.labels = np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict:
    path = self.paths[index]
    try:
      array = decode_image(path)
    except OSError as e:
      raise OSError(f'Cannot read image {path}: {e}') from e
    return {'image': array, 'label': self.labels[index]}


# 16-bit and float single-channel modes, which PIL's convert('RGB') would clip.
_WIDE_MODES = ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F')


def decode_image(path) -> np.ndarray:
  """Any image file PIL reads -> uint8 [H, W, 3] RGB, EXIF orientation applied.

  Training, evaluation and prediction all decode through here. 16-bit and
  float images are scaled to 8 bits rather than clipped.
  """
  with Image.open(path) as image:
    # Phone photos are stored sideways with an EXIF rotation tag.
    image = ImageOps.exif_transpose(image)
    if image.mode not in _WIDE_MODES:
      return np.asarray(image.convert('RGB'), np.uint8)
    array = np.asarray(image).astype(np.float64)
    if image.mode == 'F':
      top = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
    elif image.mode == 'I':
      top = 65535.0 if array.max(initial=0) > 255 else 255.0
    else:
      top = 65535.0
  gray = np.clip(np.round(array * (255.0 / top)), 0, 255).astype(np.uint8)
  return np.repeat(gray[..., None], 3, axis=-1)


class TfdsSource:
  """A `tfds.data_source` split, reduced to RGB 'image' and int32 'label'."""

  def __init__(self, data_source, indices=None):
    self._data_source = data_source
    self._indices = indices

  def __len__(self) -> int:
    return len(self._data_source if self._indices is None else self._indices)

  def __getitem__(self, index: int) -> dict:
    if self._indices is not None:
      index = int(self._indices[index])
    example = self._data_source[index]
    return {'image': to_rgb(example['image']),
            'label': np.int32(example['label'])}


def load_dataset(data_config, workdir: str | None) -> Dataset:
  """The data set `data_config.source` names, with all three splits.

  Splits the source lacks are drawn by `splits.load_or_carve` and recorded in
  WORKDIR/splits.json (when `workdir` is given) for reruns to reuse.
  """
  source = data_config.source
  if source == 'digits':
    return _load_digits(data_config, workdir)
  if source.startswith('tfds:'):
    return _load_tfds(data_config, workdir, source[len('tfds:'):])
  if source.startswith('folder:'):
    return _load_folder(data_config, workdir, source[len('folder:'):])
  raise ValueError(f"Unknown data.source {source!r}: expected 'digits', "
                   "'tfds:NAME' or 'folder:PATH'.")


def _carve(data_config, workdir, labels, missing, keys=None):
  return splits.load_or_carve(
      labels, tuple(data_config.split), data_config.split_seed, missing,
      source=data_config.source, workdir=workdir, keys=keys)


def _load_digits(data_config, workdir) -> Dataset:
  """scikit-learn's 8x8 digits (values 0..16) as 32x32 RGB uint8."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  small = np.round(digits.images * (255 / 16)).astype(np.uint8)
  # Upscaled once here, not per step: 32x32 is what CIFAR-style models expect.
  images = np.stack([
      np.asarray(Image.fromarray(image).resize((32, 32),
                                               Image.Resampling.BILINEAR))
      for image in small])
  images = np.repeat(images[..., None], 3, axis=-1)
  labels = digits.target.astype(np.int32)
  parts = _carve(data_config, workdir, labels, ('val', 'test'))
  return Dataset(
      class_names=tuple(str(name) for name in digits.target_names),
      **{name: ArraySource(images[idx], labels[idx])
         for name, idx in parts.items()})


def _load_tfds(data_config, workdir, name: str) -> Dataset:
  """A TFDS data set read through `tfds.data_source` (ArrayRecord files)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  sources = tfds.data_source(name, data_dir=data_config.data_dir,
                             download=data_config.download)
  if 'train' not in sources:
    raise ValueError(f'TFDS data set {name!r} has no train split; it has '
                     f'{sorted(sources)}.')
  info = sources['train'].dataset_info
  class_names = tuple(info.features['label'].names)
  val_name = next((n for n in ('validation', 'val') if n in sources), None)
  have = {'train': TfdsSource(sources['train']),
          'val': TfdsSource(sources[val_name]) if val_name else None,
          'test': TfdsSource(sources['test']) if 'test' in sources else None}
  missing = tuple(n for n in ('val', 'test') if have[n] is None)
  if missing:
    # Labels only: skipping image decoding makes this a fast pass.
    label_source = tfds.data_source(
        name, split='train', data_dir=data_config.data_dir, download=False,
        decoders={'image': tfds.decode.SkipDecoding()})
    labels = np.concatenate([
        [e['label'] for e in label_source.__getitems__(
            range(start, min(start + 4096, len(label_source))))]
        for start in range(0, len(label_source), 4096)]).astype(np.int32)
    parts = _carve(data_config, workdir, labels, missing)
    for split_name, idx in parts.items():
      have[split_name] = TfdsSource(sources['train'], idx)
  return Dataset(class_names, **have)


def _list_class_folder(root: str, class_names=None):
  """(image paths, labels, class names) of the images under root/CLASS/.

  Files are sorted, so labels and the order of examples do not depend on the
  file system's listing order.
  """
  if class_names is None:
    # Hidden folders (.ipynb_checkpoints, .git) are never classes.
    class_names = sorted(
        d for d in os.listdir(root)
        if os.path.isdir(os.path.join(root, d)) and not d.startswith('.'))
  files, labels = [], []
  for label, class_name in enumerate(class_names):
    class_dir = os.path.join(root, class_name)
    for dirpath, dirnames, filenames in os.walk(class_dir):
      dirnames.sort()
      for filename in sorted(filenames):
        if filename.lower().endswith(IMAGE_EXTENSIONS):
          files.append(os.path.join(dirpath, filename))
          labels.append(label)
  return files, np.asarray(labels, np.int32), tuple(class_names)


def _held_out_folder(split_root: str, class_names) -> ImageFileSource:
  """A val/test folder, labelled with train's classes (some may be absent)."""
  extra = sorted(d for d in os.listdir(split_root)
                 if d not in class_names and not d.startswith('.')
                 and os.path.isdir(os.path.join(split_root, d)))
  if extra:
    raise ValueError(f'{split_root} has classes not in train: {extra}.')
  present = [c for c in class_names
             if os.path.isdir(os.path.join(split_root, c))]
  files, labels, _ = _list_class_folder(split_root, present)
  labels = [class_names.index(present[i]) for i in labels]
  return ImageFileSource(files, labels)


def _load_folder(data_config, workdir, path: str) -> Dataset:
  """A class-per-sub-folder tree, optionally inside train/val/test folders."""
  root = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(root):
    raise ValueError(f'data.source folder {path!r} is not a directory.')
  children = {d.lower(): d for d in os.listdir(root)
              if os.path.isdir(os.path.join(root, d))}
  split_dirs = {'train': children.get('train'),
                'val': next((children[n] for n in _VAL_NAMES
                             if n in children), None),
                'test': children.get('test')}
  if split_dirs['train'] is None and (split_dirs['val'] or split_dirs['test']):
    raise ValueError(f'Folder {root} has val/test sub-folders but no train '
                     'sub-folder.')
  pre_split = split_dirs['train'] is not None
  train_root = os.path.join(root, split_dirs['train']) if pre_split else root
  files, labels, class_names = _list_class_folder(train_root)
  # Only folders that hold images are classes.
  used = sorted(set(labels.tolist()))
  class_names = tuple(class_names[i] for i in used)
  labels = np.searchsorted(np.asarray(used), labels).astype(np.int32)
  if not files:
    raise ValueError(f'No .jpg/.jpeg/.png images in class sub-folders of '
                     f'{train_root}.')
  have = {'train': ImageFileSource(files, labels), 'val': None, 'test': None}
  for name in ('val', 'test'):
    if pre_split and split_dirs[name] is not None:
      have[name] = _held_out_folder(os.path.join(root, split_dirs[name]),
                                    class_names)
  missing = tuple(n for n in ('val', 'test') if have[n] is None)
  if missing:
    keys = [os.path.relpath(f, root).replace(os.sep, '/') for f in files]
    parts = _carve(data_config, workdir, labels, missing, keys=keys)
    for name, idx in parts.items():
      have[name] = ImageFileSource([files[i] for i in idx], labels[idx])
  return Dataset(class_names, **have)
