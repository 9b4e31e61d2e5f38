"""`jaxcls.evaluation.predict`: image files of any mode and size, classified exactly as evaluation would."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn import datasets

from jaxcls.evaluation import predict
from jaxcls.data import transforms
from jaxcls.evaluation.reopen import load_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def run(tiny_run_dir):
  return load_run(tiny_run_dir)


def digit(index: int, size: tuple[int, int]) -> np.ndarray:
  """Digit `index` of scikit-learn's set as uint8 grey [height, width]."""
  image = datasets.load_digits().images[index]
  small = Image.fromarray(np.round(image * (255 / 16)).astype(np.uint8))
  return np.asarray(small.resize(size, Image.Resampling.BILINEAR))


def rgb(grey: np.ndarray) -> np.ndarray:
  return np.repeat(grey[..., None], 3, axis=-1)


@pytest.fixture(scope='module')
def image_files(tmp_path_factory):
  """{path: the RGB array a correct decoder returns}, one file per mode/format/size."""
  folder = tmp_path_factory.mktemp('images')
  (folder / 'nested' / 'deeper').mkdir(parents=True)
  expected = {}

  def save(name, image, decoded, **kwargs):
    path = folder / name
    image.save(path, **kwargs)
    expected[str(path)] = decoded

  grey = digit(0, (32, 32))
  save('grey.png', Image.fromarray(grey), rgb(grey))
  wide = digit(1, (45, 30))  # Not square: resize stretches it, as evaluation does.
  save('rgb_wide.PNG', Image.fromarray(rgb(wide)), rgb(wide))
  small = digit(2, (8, 8))
  rgba = np.concatenate([rgb(small), np.full((8, 8, 1), 255, np.uint8)], axis=-1)
  save('nested/rgba_small.png', Image.fromarray(rgba), rgb(small))
  big = digit(3, (200, 120))
  save('nested/palette.png', Image.fromarray(rgb(big)).quantize(256), None)
  sixteen = digit(4, (24, 24))
  save('nested/deeper/sixteen_bit.png',
       Image.fromarray(sixteen.astype(np.uint16) * 257).convert('I;16'), rgb(sixteen))
  save('grey.jpg', Image.fromarray(digit(5, (64, 64))), None, quality=95)
  save('cmyk.jpeg', Image.fromarray(rgb(digit(6, (40, 40)))).convert('CMYK'), None, quality=95)
  save('photo.bmp', Image.fromarray(rgb(digit(7, (33, 33)))), rgb(digit(7, (33, 33))))
  save('photo.webp', Image.fromarray(rgb(digit(8, (32, 32)))), None, lossless=True)
  # Stored sideways with an EXIF "rotate 90" tag: it must be turned upright.
  upright = digit(9, (20, 36))
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
  save('rotated.png', Image.fromarray(rgb(np.rot90(upright, 1))), rgb(upright), exif=exif)
  for path, decoded in expected.items():
    if decoded is None:  # Lossy or palette: what PIL's RGB conversion gives.
      with Image.open(path) as image:
        expected[path] = np.asarray(image.convert('RGB'))
  (folder / 'notes.txt').write_text('not an image, and not listed')
  (folder / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 10)
  return folder, expected


def reference_probabilities(run, arrays):
  data = run.config.data
  batch = np.stack([transforms.resize(a, data.image_size, data.resize_size) for a in arrays])
  return predict.softmax(run.logits(batch))


def test_decoding_gives_rgb_upright_and_16_bit_scaled(image_files):
  _, expected = image_files
  for path, decoded in expected.items():
    np.testing.assert_array_equal(predict.decode_image(path), decoded, err_msg=path)


def test_folders_are_searched_recursively_for_image_extensions(image_files):
  folder, expected = image_files
  listed = predict.list_image_files([folder])
  assert sorted(listed) == sorted([*expected, str(folder / 'corrupt.png')])
  assert predict.list_image_files([folder / 'grey.png', folder]).count(
      str(folder / 'grey.png')) == 1


def test_predict_files_matches_run_logits_on_the_preprocessed_arrays(run, image_files):
  _, expected = image_files
  paths = list(expected)
  predictions = predict.predict_files(run, paths, top_k=3, batch_size=4)
  reference = reference_probabilities(run, expected.values())
  assert [p.path for p in predictions] == paths
  for prediction, probs in zip(predictions, reference):
    assert prediction.error is None
    np.testing.assert_allclose(prediction.probabilities, probs, atol=1e-5)
    assert prediction.top_k[0][0] == run.class_names[int(np.argmax(probs))]
    assert len(prediction.top_k) == 3
    assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_unreadable_file_is_reported_not_fatal(run, image_files):
  folder, expected = image_files
  good = next(iter(expected))
  predictions = predict.predict_files(run, [folder / 'corrupt.png', good], top_k=1)
  assert predictions[0].error and not predictions[0].top_k
  assert predictions[1].error is None and predictions[1].top_k


def run_cli(*args):
  return subprocess.run([sys.executable, '-m', 'jaxcls.cli.predict', *map(str, args)], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def test_cli_writes_csv_of_top_k_and_skips_the_corrupt_file(run, image_files, tmp_path):
  folder, expected = image_files
  out = tmp_path / 'predictions.csv'
  result = run_cli('--workdir', run.workdir, '--top_k', 10, '--batch_size', 3, '--out', out,
                   folder)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'corrupt.png' in result.stderr
  with open(out, newline='') as f:
    rows = list(csv.DictReader(f))
  assert set(rows[0]) == {'path', 'rank', 'class', 'probability'}
  by_path = {}
  for row in rows:
    by_path.setdefault(row['path'], []).append(row)
  assert set(by_path) == set(expected)  # The corrupt file is left out.
  reference = dict(zip(expected, reference_probabilities(run, expected.values())))
  for path, ranked in by_path.items():
    assert [int(r['rank']) for r in ranked] == list(range(1, 11))
    probabilities = [float(r['probability']) for r in ranked]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)  # All ten classes.
    assert probabilities == sorted(probabilities, reverse=True)
    assert ranked[0]['class'] == run.class_names[int(np.argmax(reference[path]))]
  table = result.stdout
  for path in expected:
    assert path in table


def test_cli_fails_when_no_file_is_readable(run, image_files):
  folder, _ = image_files
  result = run_cli('--workdir', run.workdir, folder / 'corrupt.png', folder / 'missing.jpg')
  assert result.returncode != 0
  assert 'corrupt.png' in result.stderr and 'missing.jpg' in result.stderr


def test_cli_with_file_names_that_are_not_utf8_writes_every_row(run, tmp_path):
  """A folder with a file whose name is not valid UTF-8 (Latin-1 bytes, as old cameras and
  Windows shares leave) and an unreadable one of the same kind: the table, the whole CSV and
  the skip summary all get written, the names with their bad bytes as \\xNN."""
  import os  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'photos'
  folder.mkdir()
  try:
    good = os.path.join(os.fsencode(folder), b'caf\xe9.png')
    Image.fromarray(rgb(digit(0, (32, 32)))).save(os.fsdecode(good))
    with open(os.path.join(os.fsencode(folder), b'ba\xefd.png'), 'wb') as f:
      f.write(b'not a png')
  except OSError as e:  # A file system that refuses such names.
    pytest.skip(f'cannot create a file with a non-UTF-8 name here: {e}')
  Image.fromarray(rgb(digit(1, (32, 32)))).save(folder / 'plain.png')
  out = tmp_path / 'predictions.csv'
  result = run_cli('--workdir', run.workdir, '--out', out, folder)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out, newline='', encoding='utf-8') as f:
    paths = {row['path'] for row in csv.DictReader(f)}
  assert paths == {f'{folder}/caf\\xe9.png', f'{folder}/plain.png'}
  assert 'caf\\xe9.png' in result.stdout
  assert 'skipped 1 unreadable file(s)' in result.stderr and 'ba\\xefd.png' in result.stderr
