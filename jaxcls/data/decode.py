"""Image files to uint8 RGB arrays: the one decoder training, scanning, evaluation and prediction use."""

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp')

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
