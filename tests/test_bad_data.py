"""Messy image folders: every odd file either decodes to RGB or is skipped, counted and listed."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from jaxcls.config import default_config
from jaxcls.data import scan, sources


def _config(root, **overrides):
  config = default_config().data
  config.update({'source': f'folder:{root}', 'split': (0.6, 0.2, 0.2),
                 'max_bad_fraction': 0.5, **overrides})
  return config


def _photo(size=(40, 30)):
  """A real photo (scikit-learn's sample image of a temple), resized."""
  return Image.fromarray(load_sample_images().images[0]).resize(size)


def _messy_folder(root):
  """Class 'good': 10 plain JPEGs. Class 'odd': one file of every awkward kind."""
  (root / 'good').mkdir(parents=True)
  (root / 'odd').mkdir()
  (root / 'empty').mkdir()  # A class folder with nothing in it.
  photo = _photo()
  for i in range(10):
    photo.rotate(i).save(root / 'good' / f'{i}.jpg')
  odd = root / 'odd'
  photo.convert('L').save(odd / 'gray.png')
  photo.convert('RGBA').save(odd / 'rgba.png')
  photo.convert('P').save(odd / 'palette.png')
  photo.convert('CMYK').save(odd / 'cmyk.jpg')
  Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)).save(
      odd / 'sixteen_bit.png')
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
  photo.save(odd / 'rotated.jpg', exif=exif)
  _photo((3000, 2000)).save(odd / 'huge.jpg')
  full = (odd / 'rotated.jpg').read_bytes()
  (odd / 'truncated.jpg').write_bytes(full[:len(full) // 2])
  (odd / 'zero.jpg').write_bytes(b'')
  (odd / 'text.png').write_text('this is not a PNG')
  (odd / '.DS_Store').write_bytes(b'\0\1\2')
  (odd / 'labels.csv').write_text('a,b\n')
  return root


def test_odd_images_decode_to_rgb_and_broken_ones_are_listed(tmp_path):
  root = _messy_folder(tmp_path / 'data')
  workdir = tmp_path / 'work'
  dataset = sources.load_dataset(_config(root), str(workdir))
  assert dataset.class_names == ('good', 'odd')  # 'empty' holds no image: not a class.
  kept = {p.split('/')[-1] for split in ('train', 'val', 'test')
          for p in getattr(dataset, split).paths}
  assert {'gray.png', 'rgba.png', 'palette.png', 'cmyk.jpg', 'sixteen_bit.png', 'rotated.jpg',
          'huge.jpg'} <= kept
  assert not kept & {'truncated.jpg', 'zero.jpg', 'text.png', '.DS_Store', 'labels.csv'}

  report = json.loads((workdir / 'data_report.json').read_text())
  reasons = {r['path']: r['reason'] for r in report['unreadable']}
  assert set(reasons) == {'odd/truncated.jpg', 'odd/zero.jpg', 'odd/text.png'}
  assert reasons['odd/zero.jpg'] == 'empty file (0 bytes)'
  assert 'truncated' in reasons['odd/truncated.jpg'].lower()
  assert 'cannot decode' in reasons['odd/text.png']
  assert [r['path'] for r in report['other_files']] == ['odd/labels.csv']
  assert report['image_files'] == 20 and report['usable'] == 17
  assert report['empty_class_folders'] == ['empty']
  assert sum(s['examples'] for s in report['splits'].values()) == 17

  images = {p.split('/')[-1]: sources.decode_image(p) for p in
            [str(root / 'odd' / n) for n in ('gray.png', 'rotated.jpg', 'sixteen_bit.png',
                                              'cmyk.jpg', 'rgba.png')]}
  for image in images.values():
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
  assert images['rotated.jpg'].shape[:2] == (40, 30)  # EXIF orientation applied: portrait.
  assert images['sixteen_bit.png'].max() > 200  # Scaled from 16 bits, not clipped to 255.
  assert np.all(images['gray.png'][..., 0] == images['gray.png'][..., 2])
  np.testing.assert_allclose(images['cmyk.jpg'].mean((0, 1)), images['rgba.png'].mean((0, 1)),
                             atol=12)


def test_too_many_unreadable_images_stop_before_training_with_examples(tmp_path):
  root = _messy_folder(tmp_path / 'data')
  with pytest.raises(ValueError, match=r'3 of 20 image files .* cannot be read, more than '
                     r'config\.data\.max_bad_fraction=0\.1: .*zero\.jpg'):
    sources.load_dataset(_config(root, max_bad_fraction=0.1), str(tmp_path / 'work'))
  # The report is written all the same, for the user to go through.
  assert (tmp_path / 'work' / 'data_report.json').is_file()


def test_the_scan_decodes_each_file_once_and_rescans_only_changed_files(tmp_path, monkeypatch):
  root = _messy_folder(tmp_path / 'data')
  workdir = tmp_path / 'work'
  sources.load_dataset(_config(root), str(workdir))
  decoded = []
  original = scan._check  # pylint: disable=protected-access
  monkeypatch.setattr(scan, '_check', lambda path: decoded.append(path) or original(path))
  sources.load_dataset(_config(root), str(workdir))
  assert decoded == []
  _photo((20, 20)).save(root / 'good' / '3.jpg')  # Changed since the scan.
  sources.load_dataset(_config(root), str(workdir))
  assert [p.split('/')[-1] for p in decoded] == ['3.jpg']


def test_files_repeated_across_splits_and_classes_missing_from_a_split_are_reported(tmp_path):
  root = tmp_path / 'data'
  angle = iter(range(100))
  for split, classes in (('train', ('a', 'b')), ('test', ('a',))):
    for name in classes:
      (root / split / name).mkdir(parents=True)
      for i in range(4):
        _photo().rotate(15 * next(angle)).save(root / split / name / f"{i}.jpg")
  shutil.copy(root / 'train' / 'b' / '2.jpg', root / 'test' / 'a' / 'copy.jpg')
  workdir = tmp_path / 'work'
  sources.load_dataset(_config(root, split=(0.5, 0.5, 0.0)), str(workdir))
  report = json.loads((workdir / 'data_report.json').read_text())
  # (train/b/2.jpg may have been carved into val.)
  assert [sorted(d.values()) for d in report['duplicates_across_splits']] == [
      ['test/a/copy.jpg', 'train/b/2.jpg']]
  assert report['splits']['test']['missing_classes'] == ['b']


def test_a_folder_scan_says_what_it_does_and_then_uses_its_cache(tmp_path, caplog, monkeypatch):
  paths = []
  for i in range(5):
    path = tmp_path / f'{i}.png'
    Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(path)
    paths.append(str(path))
  monkeypatch.setattr(scan, 'REPORT_EVERY_SECONDS', 0.0)  # A progress line after every file.
  with caplog.at_level('INFO'):
    scan.scan_files(paths, tmp_path)
  assert f'scanning 5 image files (0 checked before, cached in {tmp_path}' in caplog.text
  assert 'scanned 1 of 5 files' in caplog.text and 'scanned 5 files in' in caplog.text
  caplog.clear()
  with caplog.at_level('INFO'):
    assert all(c.error is None for c in scan.scan_files(paths, tmp_path).values())
  assert 'scanning' not in caplog.text  # All cached: nothing to say.
