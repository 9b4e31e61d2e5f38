"""Specification of jaxcls.data.sources: digits, image folders and TFDS."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from jaxcls.config import default_config, resolve_automatic_fields
from jaxcls.data import sources


def data_config(**overrides):
  config = resolve_automatic_fields(default_config()).data
  config.update(overrides)
  return config


def all_examples(dataset):
  return [split[i] for split in (dataset.train, dataset.val, dataset.test)
          for i in range(len(split))]


# ------------------------------------------------------------------ digits ---


def test_digits_has_all_1797_examples_as_32x32_rgb_uint8():
  dataset = sources.load_dataset(data_config(), None)
  assert len(dataset.train) + len(dataset.val) + len(dataset.test) == 1797
  assert dataset.class_names == tuple(str(d) for d in range(10))
  example = dataset.train[0]
  assert example['image'].shape == (32, 32, 3)
  assert example['image'].dtype == np.uint8
  assert example['label'].dtype == np.int32
  images = dataset.train.images
  assert images.max() == 255 and images.min() == 0
  # Gray: the three channels are copies.
  np.testing.assert_array_equal(images[..., 0], images[..., 2])
  assert set(np.unique(dataset.test.labels).tolist()) == set(range(10))


# ------------------------------------------------------------------ folder ---

RED, GRAY = (220, 10, 10), 128


def write_class_images(class_dir, kind, count):
  """`count` images of class `kind` ('red' or 'gray') in mixed formats."""
  os.makedirs(class_dir, exist_ok=True)
  for i in range(count):
    size = (12 + i, 10)  # Different sizes per example.
    if kind == 'red':
      image = Image.new('RGB', size, RED)
      name = f'r{i}.jpg' if i % 2 else f'r{i}.PNG'
    else:
      image = Image.new('L', size, GRAY) if i % 2 else Image.new(
          'RGBA', size, (GRAY, GRAY, GRAY, 255))
      name = f'g{i}.jpeg' if i % 2 else f'g{i}.png'
    if name.lower().endswith(('.jpg', '.jpeg')):
      image = image.convert('RGB') if image.mode == 'RGBA' else image
    image.save(os.path.join(class_dir, name))
  with open(os.path.join(class_dir, 'notes.txt'), 'w') as f:
    f.write('not an image')


def assert_label_matches_content(dataset, example):
  image = example['image']
  assert image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.uint8
  mean = image.reshape(-1, 3).mean(0)
  kind = dataset.class_names[int(example['label'])]
  if kind == 'red':
    assert mean[0] > 180 and mean[1] < 60 and mean[2] < 60, mean
  else:
    assert np.all(np.abs(mean - GRAY) < 4), mean


def test_flat_folder_reads_png_and_jpeg_as_rgb_with_folder_labels(tmp_path):
  write_class_images(tmp_path / 'red', 'red', 12)
  write_class_images(tmp_path / 'gray', 'gray', 8)
  dataset = sources.load_dataset(
      data_config(source=f'folder:{tmp_path}', split=(0.5, 0.25, 0.25)), None)
  assert dataset.class_names == ('gray', 'red')
  examples = all_examples(dataset)
  assert len(examples) == 20  # notes.txt is not an image.
  for example in examples:
    assert_label_matches_content(dataset, example)
  assert len(dataset.train) == 10 and len(dataset.val) == 5


def test_flat_folder_split_is_recorded_as_file_paths(tmp_path):
  root = tmp_path / 'images'
  write_class_images(root / 'red', 'red', 6)
  write_class_images(root / 'gray', 'gray', 6)
  config = data_config(source=f'folder:{root}', split=(4, 4, 4))
  sources.load_dataset(config, str(tmp_path / 'work'))
  record = json.loads((tmp_path / 'work' / 'splits.json').read_text())
  assert sorted(record['train'] + record['val'] + record['test']) == sorted(
      f'{c}/{f}' for c in ('gray', 'red')
      for f in os.listdir(root / c) if not f.endswith('.txt'))


def test_pre_split_folder_uses_its_own_splits(tmp_path):
  write_class_images(tmp_path / 'train' / 'red', 'red', 6)
  write_class_images(tmp_path / 'train' / 'gray', 'gray', 4)
  write_class_images(tmp_path / 'valid' / 'red', 'red', 3)
  write_class_images(tmp_path / 'test' / 'gray', 'gray', 2)  # Only one class.
  dataset = sources.load_dataset(
      data_config(source=f'folder:{tmp_path}'), str(tmp_path / 'work'))
  assert dataset.class_names == ('gray', 'red')
  assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (10, 3, 2)
  assert list(dataset.val.labels) == [1, 1, 1]
  assert list(dataset.test.labels) == [0, 0]
  for example in all_examples(dataset):
    assert_label_matches_content(dataset, example)
  assert not (tmp_path / 'work' / 'splits.json').exists()


def test_pre_split_folder_without_val_carves_it_from_train(tmp_path):
  write_class_images(tmp_path / 'train' / 'red', 'red', 8)
  write_class_images(tmp_path / 'train' / 'gray', 'gray', 8)
  write_class_images(tmp_path / 'test' / 'red', 'red', 2)
  dataset = sources.load_dataset(
      data_config(source=f'folder:{tmp_path}', split=(0.6, 0.2, 0.2)), None)
  assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (12, 4, 2)
  np.testing.assert_array_equal(np.bincount(dataset.val.labels), [2, 2])


def test_a_folder_with_train_and_val_but_no_test_tests_on_val(tmp_path, caplog):
  write_class_images(tmp_path / 'train' / 'red', 'red', 8)
  write_class_images(tmp_path / 'train' / 'gray', 'gray', 8)
  write_class_images(tmp_path / 'val' / 'red', 'red', 3)
  write_class_images(tmp_path / 'val' / 'gray', 'gray', 3)
  dataset = sources.load_dataset(data_config(source=f'folder:{tmp_path}'), str(tmp_path / 'w'))
  assert dataset.test is dataset.val and len(dataset.train) == 16  # Nothing taken from train.
  assert 'the test split is the val split' in caplog.text and 'optimistic' in caplog.text
  report = json.loads((tmp_path / 'w' / 'data_report.json').read_text())
  # The synthetic images repeat across train/ and val/; val is never reported as test's copy.
  assert report['duplicates_across_splits'] and not any(
      'test' in pair for pair in report['duplicates_across_splits'])
  carved = sources.load_dataset(data_config(source=f'folder:{tmp_path}', missing_test='split',
                                            split=(0.75, 0.0, 0.25)), None)
  assert (len(carved.train), len(carved.val), len(carved.test)) == (12, 6, 4)


def test_val_class_unknown_to_train_is_an_error(tmp_path):
  write_class_images(tmp_path / 'train' / 'red', 'red', 2)
  write_class_images(tmp_path / 'val' / 'blue', 'red', 2)
  with pytest.raises(ValueError, match='blue'):
    sources.load_dataset(data_config(source=f'folder:{tmp_path}'), None)


def test_hidden_folders_are_not_classes(tmp_path):
  write_class_images(tmp_path / 'red', 'red', 4)
  write_class_images(tmp_path / 'gray', 'gray', 4)
  write_class_images(tmp_path / '.ipynb_checkpoints', 'red', 2)
  dataset = sources.load_dataset(
      data_config(source=f'folder:{tmp_path}', split=(4, 2, 2)), None)
  assert dataset.class_names == ('gray', 'red')


def test_exif_orientation_is_applied(tmp_path):
  image = Image.new('RGB', (20, 10), RED)
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
  os.makedirs(tmp_path / 'red')
  image.save(tmp_path / 'red' / 'photo.jpg', exif=exif)
  source = sources.ImageFileSource([tmp_path / 'red' / 'photo.jpg'], [0])
  assert source[0]['image'].shape == (20, 10, 3)


def test_missing_folder_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match='not a directory'):
    sources.load_dataset(data_config(source=f'folder:{tmp_path}/nope'), None)


def test_folder_without_images_is_a_clear_error(tmp_path):
  os.makedirs(tmp_path / 'cats')
  (tmp_path / 'cats' / 'readme.txt').write_text('no images here')
  with pytest.raises(ValueError, match='No readable images'):
    sources.load_dataset(data_config(source=f'folder:{tmp_path}'), None)


def test_unknown_source_kind_names_the_value():
  with pytest.raises(ValueError, match='hf:mnist'):
    sources.load_dataset(data_config(source='hf:mnist'), None)


# -------------------------------------------------------------------- tfds ---


@pytest.fixture(scope='module')
def tiny_tfds_dir(tmp_path_factory):
  """A prepared TFDS data set with train and test splits, built offline."""
  tfds = pytest.importorskip('tensorflow_datasets')

  class JaxclsTinyShades(tfds.core.GeneratorBasedBuilder):
    """Gray 8x8 images whose shade is 40 * (label + 1)."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(8, 8, 1)),
              'label': tfds.features.ClassLabel(names=['dark', 'mid', 'light']),
          }))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(30),
              'test': self._generate_examples(9)}

    def _generate_examples(self, count):
      for i in range(count):
        label = i % 3
        yield i, {'image': np.full((8, 8, 1), 40 * (label + 1), np.uint8),
                  'label': label}

  data_dir = tmp_path_factory.mktemp('tfds')
  JaxclsTinyShades(data_dir=str(data_dir),
                   file_format='array_record').download_and_prepare()
  return data_dir


def test_tfds_source_reads_local_files_and_carves_val(tiny_tfds_dir, tmp_path):
  config = data_config(source='tfds:jaxcls_tiny_shades',
                       data_dir=str(tiny_tfds_dir), download=False,
                       split=(0.8, 0.2, 0.0))
  dataset = sources.load_dataset(config, str(tmp_path))
  assert dataset.class_names == ('dark', 'mid', 'light')
  assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (24, 6, 9)
  for example in all_examples(dataset):
    assert example['image'].shape == (8, 8, 3)
    assert example['image'].dtype == np.uint8
    assert example['label'].dtype == np.int32
    assert np.all(example['image'] == 40 * (example['label'] + 1))
  val_labels = [int(dataset.val[i]['label']) for i in range(6)]
  assert sorted(val_labels) == [0, 0, 1, 1, 2, 2]
  assert (tmp_path / 'splits.json').exists()


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
  """A 16-bit PNG (medical and scientific folders have them) keeps its contrast."""
  ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
  Image.fromarray(ramp).save(tmp_path / 'ramp.png')
  image = sources.ImageFileSource([tmp_path / 'ramp.png'], [0])[0]['image']
  assert image.shape == (8, 8, 3) and image.dtype == np.uint8
  np.testing.assert_array_equal(image[..., 0], np.round(ramp * (255 / 65535)).astype(np.uint8))
