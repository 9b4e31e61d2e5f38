"""WORKDIR/first_batch.png: the first train batch as the model sees it, to look at.

Written before the first step, from the same augmentation, mixing and keys
the step uses (`steps.jit_preview`), and also sent to TensorBoard.
"""

from pathlib import Path

import jax
import numpy as np
from absl import logging
from PIL import Image

FIRST_BATCH_PNG = 'first_batch.png'


def write_first_batch(images, path: Path, writer, step: int) -> None:
  """The first train batch (augmented, mixed; before normalisation) as an image grid in
  `path` and in TensorBoard."""
  grid = image_grid(np.asarray(jax.device_get(images)))
  Image.fromarray(grid).save(path)
  if hasattr(writer, 'write_images'):  # Not the console fallback.
    writer.write_images(step, {'train/first_batch': grid[None]})
  logging.info('first train batch (augmented and mixed) written to %s', path)


def image_grid(images: np.ndarray, columns: int = 16, max_images: int = 128,
               min_side: int = 64) -> np.ndarray:
  """uint8 [N, H, W, 3] -> one uint8 [rows * H', columns * W', 3] grid, 2-pixel gaps, each
  image enlarged by a whole factor (nearest neighbour) to at least `min_side` pixels."""
  images = images[:max_images]
  count, height, width = images.shape[:3]
  factor = max(1, -(-min_side // max(height, width)))
  images = images.repeat(factor, axis=1).repeat(factor, axis=2)
  height, width, gap = height * factor, width * factor, 2
  columns = min(columns, count)
  rows = -(-count // columns)
  grid = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
  for i, image in enumerate(images):
    top, left = (i // columns) * (height + gap), (i % columns) * (width + gap)
    grid[top:top + height, left:left + width] = image
  return grid
