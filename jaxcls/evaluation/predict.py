"""Classifies image files with a trained run: `python -m jaxcls.cli.predict --workdir DIR PATH...`.

PATHs are image files or folders (searched recursively for .jpg/.jpeg/.png/
.bmp/.webp). Each image is decoded to RGB as training decodes folder images
(EXIF rotation applied), preprocessed as evaluation does (`transforms.resize`
with the run's `image_size` and `resize_size`) and classified by the run's
best checkpoint. The top-k classes are printed as a table and written to a CSV
(path, rank, class, probability; default DIR/predictions.csv). Files that
cannot be read are named in a warning and skipped; the exit status is non-zero
only when none could be read.

    python -m jaxcls.cli.predict --workdir /tmp/run --top_k 3 photos/ extra.jpg
"""

import concurrent.futures
import csv
import dataclasses
import os
from pathlib import Path

import numpy as np
from absl import logging

from jaxcls.data import transforms
from jaxcls.data.decode import decode_image

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
# PIL modes of more than 8 bits per sample, which PIL's convert('RGB') clips
# at 255 instead of scaling.


@dataclasses.dataclass(frozen=True)
class Prediction:
  """The outcome for one file: its top-k classes, or why it could not be read."""
  path: str
  top_k: tuple[tuple[str, float], ...] = ()  # (class name, probability), most probable first.
  probabilities: np.ndarray | None = None  # [num_classes], summing to 1.
  error: str | None = None  # Set when the file could not be read; then the rest is empty.


def list_image_files(paths) -> list[str]:
  """Files as given (whatever their extension) and the images found under folders, sorted.

  A file named twice (directly and through its folder) is listed once, where first met.
  """
  files = []
  for path in paths:
    path = os.path.expanduser(str(path))
    if not os.path.isdir(path):
      files.append(path)  # A missing file is reported as unreadable, not silently dropped.
      continue
    for dirpath, dirnames, filenames in os.walk(path):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
      files.extend(os.path.join(dirpath, name) for name in sorted(filenames)
                   if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.'))
  return list(dict.fromkeys(files))


def load_and_preprocess(path: str, image_size: int, resize_size: int = 0,
                        interpolation: str = 'bilinear') -> np.ndarray:
  """A file -> the uint8 [image_size, image_size, 3] array evaluation would feed the model."""
  image = transforms.resize(decode_image(path), image_size, resize_size, interpolation)
  return np.ascontiguousarray(image)


def _try_load(path, resize: transforms.Resize):
  try:
    return load_and_preprocess(path, resize.image_size, resize.resize_size,
                               resize.interpolation), None
  except Exception as e:  # pylint: disable=broad-except
    # PIL raises OSError, ValueError, DecompressionBombError... for bad files.
    return None, f'{type(e).__name__}: {e}'


def softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(axis=-1, keepdims=True)
  exp = np.exp(shifted.astype(np.float64))
  return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def predict_files(run, paths, top_k: int = 5, batch_size: int = 64) -> list[Prediction]:
  """Classifies the image files `paths` with `run` (a `jaxcls.evaluation.reopen.Run`).

  Returns one Prediction per path, in order; a file that cannot be read gets
  one with `error` set (and a logged warning) instead of failing the rest.
  Folders are not expanded here: see `list_image_files`.
  """
  paths = [str(p) for p in paths]
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  top_k = max(1, min(top_k, len(run.class_names)))
  resize = transforms.Resize.from_config(run.config.data)
  # Every batch has the same shape, so the forward pass compiles once.
  padded_size = max(1, min(batch_size, len(paths)))
  results = []
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
    for start in range(0, len(paths), batch_size):
      chunk = paths[start:start + batch_size]
      loaded = list(pool.map(lambda p: _try_load(p, resize), chunk))
      images = [image for image, _ in loaded if image is not None]
      probabilities = iter(())
      if images:
        batch = np.zeros((padded_size, *images[0].shape), np.uint8)
        batch[:len(images)] = images
        probabilities = iter(softmax(run.logits(batch)[:len(images)]))
      for path, (image, error) in zip(chunk, loaded):
        if image is None:
          logging.warning('Skipping unreadable image %s (%s)', path, error)
          results.append(Prediction(path=path, error=error))
          continue
        probs = next(probabilities)
        order = np.argsort(-probs, kind='stable')[:top_k]
        results.append(Prediction(
            path=path, probabilities=probs,
            top_k=tuple((run.class_names[i], float(probs[i])) for i in order)))
  return results


def printable(path: str) -> str:
  """`path` as UTF-8 text: a file name that is not valid UTF-8 (os.listdir keeps its bytes as
  surrogates) gets its bad bytes written as \\xNN, so printing it or a CSV row of it never
  fails."""
  return os.fsencode(path).decode('utf-8', 'backslashreplace')


def write_csv(predictions, out: str | Path) -> None:
  """Rows of (path, rank, class, probability), ranks from 1; unreadable files are left out.
  UTF-8; paths that are not valid UTF-8 as `printable` writes them."""
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  with open(out, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(['path', 'rank', 'class', 'probability'])
    for prediction in predictions:
      for rank, (name, probability) in enumerate(prediction.top_k, start=1):
        writer.writerow([printable(prediction.path), rank, name, f'{probability:.6f}'])


def format_table(predictions) -> str:
  """A console table: one row per readable file, its top-k 'class probability' cells."""
  rows = [(printable(p.path), [f'{name} {probability:.3f}' for name, probability in p.top_k])
          for p in predictions if p.error is None]
  if not rows:
    return ''
  k = max(len(cells) for _, cells in rows)
  header = ('file', [f'top-{i + 1}' for i in range(k)])
  file_width = max(len(path) for path, _ in [header, *rows])
  cell_width = max(len(cell) for _, cells in [header, *rows] for cell in cells)
  lines = [f'{path:<{file_width}}  ' + '  '.join(f'{c:<{cell_width}}' for c in cells)
           for path, cells in [header, *rows]]
  return '\n'.join(line.rstrip() for line in lines)
