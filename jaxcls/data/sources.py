"""Random-access example sources: digits, TFDS and image folders.

Every split is a plain object with `__len__` and `__getitem__(i)` returning
{'image': uint8 [H, W, 3], 'label': int32 scalar}, which is all
`grain.MapDataset.source` needs. Folder images are decoded in `__getitem__`,
so the decoding runs in Grain's threads and worker processes, not at load.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np
from PIL import Image

from absl import logging

from jaxcls.data import scan, splits
from jaxcls.data.decode import IMAGE_EXTENSIONS, decode_image
from jaxcls.errors import ConfigProblems, either

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


# config.data.source: what `load_dataset` reads.
SOURCE_FORMS = "expected 'digits', 'tfds:NAME' or 'folder:PATH'"
# config.data.missing_test: a source with a val split but no test split tests on 'val', or
# carves ('split') a test split from train.
MISSING_TEST = ('val', 'split')


def config_errors(data_config) -> list[str]:
  """What is wrong with the fields of `config.data` that say which examples each split holds."""
  c, p = data_config, ConfigProblems('data', data_config)
  kind, _, name = c.source.partition(':')
  p.check(c.source == 'digits' or (kind in ('tfds', 'folder') and bool(name)), 'source',
          SOURCE_FORMS)
  try:
    kind, split = splits.parse_split(tuple(c.split))
    p.check(split[0] > 0, 'split', f'the train {kind[:-1]} must be positive')
  except ValueError as e:
    p.report('split', str(e))
  p.check(c.missing_test in MISSING_TEST, 'missing_test', f'expected {either(MISSING_TEST)}')
  p.check(c.num_folds == 0 or c.num_folds >= 2, 'num_folds', 'must be 0 (off) or >= 2')
  p.check(0 <= c.fold < max(c.num_folds, 1), 'fold',
          f'must be in [0, data.num_folds={c.num_folds})' if c.num_folds else
          'must be 0 when data.num_folds is 0 (k-fold off)')
  p.check(0 <= c.max_bad_fraction <= 1, 'max_bad_fraction', 'must be in [0, 1]')
  return p


def unavailable(data_config) -> str | None:
  """Why `data.source` cannot be read on this machine (a folder that is not there), before a
  run creates its workdir; None when it can be tried. Not a config check: a config names data
  that another machine may have."""
  kind, _, name = data_config.source.partition(':')
  if kind == 'folder' and name and not os.path.isdir(os.path.expanduser(name)):
    return (f'data.source folder {name!r} ' + ('is not a directory' if os.path.exists(
        os.path.expanduser(name)) else 'does not exist'))
  return None


def load_dataset(data_config, workdir: str | None) -> Dataset:
  """The data set `data_config.source` names, with all three splits.

  Splits the source lacks are drawn by `splits.load_or_carve` and recorded in
  WORKDIR/splits.json (when `workdir` is given) for reruns to reuse.
  WORKDIR/data_report.json says what each split holds per class and, for
  folders, which files were skipped and why and which files repeat across
  splits.
  """
  source = data_config.source
  if source == 'digits':
    dataset = _load_digits(data_config, workdir)
  elif source.startswith('tfds:'):
    dataset = _load_tfds(data_config, workdir, source[len('tfds:'):])
  elif source.startswith('folder:'):
    dataset = _load_folder(data_config, workdir, source[len('folder:'):])  # Writes its report.
  else:
    raise ValueError(f'Unknown data.source {source!r}: {SOURCE_FORMS}.')
  summary = split_summary(dataset)
  if not source.startswith('folder:'):
    _write_report(workdir, dict(source=source, **summary))
  for split, info in summary['splits'].items():
    if info['missing_classes'] and split != 'train' and info['examples']:
      logging.warning('the %s split has no example of class(es) %s: their %s recall is '
                      'undefined', split, info['missing_classes'], split)
  return dataset


def _carve(data_config, workdir, labels, missing, keys=None):
  return splits.load_or_carve(
      labels, tuple(data_config.split), data_config.split_seed, missing,
      source=data_config.source, workdir=workdir, keys=keys,
      num_folds=data_config.num_folds, fold=data_config.fold)


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
  _test_is_val(data_config, have, f'TFDS {name}')
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


def _list_class_folder(root: str, class_names=None, skipped=None):
  """(image paths, labels, class names) of the images under root/CLASS/.

  Files are sorted, so labels and the order of examples do not depend on the
  file system's listing order. Files without an image extension are appended
  to `skipped` as (path, reason); hidden files (.DS_Store) are ignored.
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
      dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
      for filename in sorted(filenames):
        if filename.lower().endswith(IMAGE_EXTENSIONS):
          files.append(os.path.join(dirpath, filename))
          labels.append(label)
        elif skipped is not None and not filename.startswith('.'):
          skipped.append((os.path.join(dirpath, filename), 'not an image file (extension '
                          f'{os.path.splitext(filename)[1] or "none"})'))
  return files, np.asarray(labels, np.int32), tuple(class_names)


def _held_out_folder(split_root: str, class_names, skipped) -> tuple[list, list]:
  """A val/test folder's (paths, labels), labelled with train's classes (some may be absent)."""
  extra = sorted(d for d in os.listdir(split_root)
                 if d not in class_names and not d.startswith('.')
                 and os.path.isdir(os.path.join(split_root, d)))
  if extra:
    raise ValueError(f'{split_root} has classes not in train: {extra}.')
  present = [c for c in class_names
             if os.path.isdir(os.path.join(split_root, c))]
  files, labels, _ = _list_class_folder(split_root, present, skipped)
  return files, [class_names.index(present[i]) for i in labels]


def _load_folder(data_config, workdir, path: str) -> Dataset:
  """A class-per-sub-folder tree, optionally inside train/val/test folders.

  Every file is checked once up front (`scan.scan_files`, cached in the
  workdir): unreadable ones are left out and listed in WORKDIR/data_report.json,
  and too many of them stop the run before training.
  """
  root = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(root):
    raise ValueError(f'data.source folder {path!r} is not a directory.')
  split_dirs = _split_folders(root)
  pre_split = split_dirs['train'] is not None
  train_root = os.path.join(root, split_dirs['train']) if pre_split else root
  skipped = []
  files, labels, class_names = _list_class_folder(train_root, skipped=skipped)
  listed = {'train': (files, labels)}
  for name in ('val', 'test'):
    if pre_split and split_dirs[name] is not None:
      listed[name] = _held_out_folder(os.path.join(root, split_dirs[name]), class_names,
                                      skipped)
  readable, checks, report = _readable_files(data_config, workdir, root, listed, skipped)
  class_names, have, remap = _sources_of_used_classes(readable, class_names, split_dirs,
                                                      train_root, report)
  _test_is_val(data_config, have, f'{root} (train/ and {split_dirs["val"]}/, no test/)')
  missing = tuple(n for n in ('val', 'test') if have[n] is None)
  if missing:
    files, labels = readable['train']
    keys = [os.path.relpath(f, root).replace(os.sep, '/') for f in files]
    labels = np.asarray([remap[l] for l in labels], np.int32)
    parts = _carve(data_config, workdir, labels, missing, keys=keys)
    for name, idx in parts.items():
      have[name] = ImageFileSource([files[i] for i in idx], labels[idx])
  dataset = Dataset(class_names, **have)
  report['duplicates_across_splits'] = _duplicates_across_splits(dataset, checks, root)
  if report['duplicates_across_splits']:
    logging.warning('%d identical files appear in two splits (listed in data_report.json), '
                    'e.g. %s', len(report['duplicates_across_splits']),
                    report['duplicates_across_splits'][0])
  _write_report(workdir, {**report, **split_summary(dataset)})
  return dataset


def _split_folders(root: str) -> dict[str, str | None]:
  """{'train', 'val', 'test'} -> the sub-folder of `root` holding that split, None if none."""
  children = {d.lower(): d for d in os.listdir(root)
              if os.path.isdir(os.path.join(root, d))}
  split_dirs = {'train': children.get('train'),
                'val': next((children[n] for n in _VAL_NAMES if n in children), None),
                'test': children.get('test')}
  if split_dirs['train'] is None and (split_dirs['val'] or split_dirs['test']):
    raise ValueError(f'Folder {root} has val/test sub-folders but no train '
                     'sub-folder.')
  return split_dirs


def _readable_files(data_config, workdir, root: str, listed: dict, skipped: list):
  """({split: (readable files, their labels)}, the scan's checks, the data report so far);
  raises when more than `max_bad_fraction` of the image files cannot be read."""
  checks = scan.scan_files([f for fs, _ in listed.values() for f in fs], workdir,
                           num_threads=max(data_config.num_threads, 1))
  # Files named as images that do not decode count against max_bad_fraction;
  # other files (notes.txt, labels.csv) are only listed.
  unreadable = [(f, c.error) for f, c in checks.items() if c.error]
  total = len(checks)
  report = dict(source=data_config.source, image_files=total, usable=total - len(unreadable),
                unreadable=[dict(path=os.path.relpath(f, root), reason=r) for f, r in unreadable],
                other_files=[dict(path=os.path.relpath(f, root), reason=r) for f, r in skipped])
  if unreadable:
    logging.warning('%d of %d image files under %s cannot be read and are skipped (listed in '
                    'data_report.json), e.g. %s: %s', len(unreadable), total, root,
                    unreadable[0][0], unreadable[0][1])
  if total and len(unreadable) / total > data_config.max_bad_fraction:
    examples = '; '.join(f'{f}: {r}' for f, r in unreadable[:5])
    _write_report(workdir, report)
    raise ValueError(
        f'{len(unreadable)} of {total} image files under {root} cannot be read, more than '
        f'config.data.max_bad_fraction={data_config.max_bad_fraction}: {examples}')
  readable = {name: ([f for f in fs if not checks[f].error],
                     np.asarray([l for f, l in zip(fs, ls) if not checks[f].error], np.int32))
              for name, (fs, ls) in listed.items()}
  return readable, checks, report


def _sources_of_used_classes(readable: dict, class_names, split_dirs, train_root: str,
                             report: dict):
  """(class names, {split: ImageFileSource or None}, old label -> new): only folders that
  hold readable train images are classes."""
  files, labels = readable['train']
  used = sorted(set(labels.tolist()))
  empty = [c for i, c in enumerate(class_names) if i not in used]
  if empty:
    logging.warning('class folder(s) %s under %s hold no readable image: not classes', empty,
                    train_root)
    report['empty_class_folders'] = empty
  names = tuple(class_names[i] for i in used)
  remap = {old: new for new, old in enumerate(used)}
  if not files:
    raise ValueError(f'No readable images ({", ".join(IMAGE_EXTENSIONS)}) in class '
                     f'sub-folders of {train_root}.')
  have = {'train': ImageFileSource(files, [remap[l] for l in labels]), 'val': None, 'test': None}
  for name in ('val', 'test'):
    if name in readable:
      held_files, held_labels = readable[name]
      orphans = sorted({class_names[l] for l in held_labels.tolist() if l not in remap})
      if orphans:
        raise ValueError(f'{split_dirs[name]}/ has images of class(es) {orphans}, whose train '
                         'folder holds no readable image')
      have[name] = ImageFileSource(held_files, [remap[l] for l in held_labels])
  return names, have, remap


def _test_is_val(data_config, have: dict, what: str) -> None:
  """With data.missing_test='val', a source with its own val split but no test tests on val.

  A folder with train/ and val/ (the ants-vs-bees layout of PyTorch's
  transfer-learning tutorial) means "validate on val/"; carving a test split
  out of a small train/ would leave a few dozen test images and fewer to train
  on. Testing on val is what such a user compares against, but the checkpoint
  was chosen on it, so the log says the figure is optimistic.
  """
  if have['val'] is None or have['test'] is not None or (
      data_config.get('missing_test') or 'val') != 'val':
    return
  have['test'] = have['val']
  logging.warning('%s: the test split is the val split (config.data.missing_test=\'val\'); '
                  'the best checkpoint is chosen on it too, so its test metrics are optimistic. '
                  '--config.data.missing_test=split draws a test split from train instead.', what)


def _duplicates_across_splits(dataset: Dataset, checks, root) -> list[dict]:
  """Byte-identical files in different splits: test images the model trained on."""
  first_seen = {}
  duplicates = []
  for split in ('train', 'val') if dataset.test is dataset.val else ('train', 'val', 'test'):
    for path in getattr(dataset, split).paths:
      digest = checks[path].sha1
      if digest in first_seen and first_seen[digest][0] != split:
        other_split, other = first_seen[digest]
        duplicates.append({other_split: os.path.relpath(other, root),
                           split: os.path.relpath(path, root)})
      first_seen.setdefault(digest, (split, path))
  return duplicates


def examples_digest(source) -> str:
  """A sha256 of which examples `source` holds, in order, and their labels: what a cache of
  per-example results (`jaxcls.training.feature_cache`) is keyed by. Files count by path,
  size and modification time, arrays by their bytes, a TFDS split by its data set, split and
  indices; any other source by every example's pixels and label."""
  digest = hashlib.sha256()
  if isinstance(source, ImageFileSource):
    for path in source.paths:
      stat = os.stat(path)
      digest.update(f'{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())
  elif isinstance(source, ArraySource):
    digest.update(np.ascontiguousarray(source.images).tobytes())
  elif isinstance(source, TfdsSource):
    info = getattr(source._data_source, 'dataset_info', None)  # pylint: disable=protected-access
    digest.update(f'{getattr(info, "full_name", info)}\0'
                  f'{getattr(source._data_source, "split", "")}\0{len(source)}'.encode())  # pylint: disable=protected-access
    if source._indices is not None:  # pylint: disable=protected-access
      digest.update(np.asarray(source._indices, np.int64).tobytes())  # pylint: disable=protected-access
  else:
    for i in range(len(source)):
      example = source[i]
      digest.update(np.ascontiguousarray(example['image']).tobytes())
      digest.update(np.int64(example['label']).tobytes())
  labels = getattr(source, 'labels', None)
  if labels is not None:
    digest.update(np.asarray(labels, np.int64).tobytes())
  return digest.hexdigest()


def split_summary(dataset: Dataset) -> dict:
  """Examples per split and class, and the classes a split lacks."""
  summary = dict(class_names=list(dataset.class_names), splits={})
  for split in ('train', 'val', 'test'):
    labels = source_labels_of(getattr(dataset, split))
    if labels is None:
      continue
    counts = np.bincount(labels, minlength=len(dataset.class_names))
    summary['splits'][split] = dict(
        examples=int(len(labels)),
        per_class={c: int(n) for c, n in zip(dataset.class_names, counts)},
        missing_classes=[c for c, n in zip(dataset.class_names, counts) if n == 0])
  return summary


def source_labels_of(source) -> np.ndarray | None:
  """The labels of an in-memory or file source without reading images; None for TFDS."""
  labels = getattr(source, 'labels', None)
  return None if labels is None else np.asarray(labels)


def _write_report(workdir, report: dict) -> None:
  if workdir is None:
    return
  path = os.path.join(workdir, 'data_report.json')
  os.makedirs(workdir, exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'  # Whole or not at all; per process on shared disks.
  with open(tmp, 'w') as f:
    json.dump(report, f, indent=2)
  os.replace(tmp, path)
