"""The report's PNGs as TensorBoard images, beside the run's training curves.

`clu.metric_writers` imports TensorFlow, which a bare GPU image may lack: the
import is deferred to the call and its failure only logged, so the PNGs are
written either way.
"""

from pathlib import Path

import numpy as np
from absl import logging
from PIL import Image


def png_to_array(path: Path) -> np.ndarray:
  """A PNG file -> uint8 [1, H, W, 3], the batch of one image `write_images` takes."""
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'), np.uint8)[None]


def write_images(logdir: Path, step: int, pngs: dict[str, Path]) -> bool:
  """Writes {name: PNG file} as images at `step` in `logdir`; False if clu/TF is unavailable."""
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    logging.info('report: no TensorBoard images (clu.metric_writers unavailable: %s)', e)
    return False
  writer = metric_writers.create_default_writer(str(logdir), asynchronous=False)
  try:
    writer.write_images(step, {name: png_to_array(path) for name, path in pngs.items()})
    writer.flush()
  finally:
    writer.close()
  return True
