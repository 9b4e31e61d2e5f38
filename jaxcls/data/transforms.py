"""Per-example image transforms: uint8 HWC numpy in, uint8 HWC numpy out.

They run on the host in Grain's threads or worker processes; normalisation is
left to the device so batches cross the host-to-device link as uint8. Each is
a small picklable class so that Grain's worker processes can receive it.
"""

import dataclasses
import math

import grain
import numpy as np
from PIL import Image

# config.data.interpolation -> PIL's resampling filter.
RESAMPLING = {'bilinear': Image.Resampling.BILINEAR, 'bicubic': Image.Resampling.BICUBIC}


def resize(image: np.ndarray, image_size: int, resize_size: int = 0,
           interpolation: str = 'bilinear'):
  """Resizes to `image_size` squared, via a center crop if `resize_size`.

  With `resize_size` > 0 the shorter side goes to `resize_size` first and the
  center `image_size` square is kept, which preserves the aspect ratio (the
  ImageNet evaluation convention); otherwise the image is stretched.
  `interpolation` is the weights' ('bicubic' for TF's and timm's).
  """
  resample = RESAMPLING[interpolation]
  height, width = image.shape[:2]
  if resize_size > 0:
    if min(height, width) != resize_size:
      scale = resize_size / min(height, width)
      size = (max(resize_size, round(width * scale)),
              max(resize_size, round(height * scale)))
      image = np.asarray(
          Image.fromarray(image).resize(size, resample))
      height, width = image.shape[:2]
    if height < image_size or width < image_size:
      raise ValueError(f'data.resize_size={resize_size} is smaller than '
                       f'data.image_size={image_size}.')
    top, left = (height - image_size) // 2, (width - image_size) // 2
    return image[top:top + image_size, left:left + image_size]
  if (height, width) == (image_size, image_size):
    return image
  return np.asarray(Image.fromarray(image).resize((image_size, image_size), resample))


def random_crop(image: np.ndarray, padding: int, rng: np.random.Generator):
  """Zero-pads each side by `padding`, then crops back at a random offset."""
  if padding <= 0:
    return image
  height, width = image.shape[:2]
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  top, left = rng.integers(0, 2 * padding + 1, size=2)
  return padded[top:top + height, left:left + width]


def random_resized_crop_box(height: int, width: int, scale, ratio,
                            rng: np.random.Generator):
  """(top, left, crop height, crop width) as torchvision's RandomResizedCrop.

  Area fraction uniform in `scale` and aspect ratio (width / height)
  log-uniform in `ratio`; after ten draws that do not fit, the largest
  center crop whose ratio lies within `ratio`.
  """
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    area = height * width * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    crop_w = round(math.sqrt(area * aspect))
    crop_h = round(math.sqrt(area / aspect))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      top = int(rng.integers(0, height - crop_h + 1))
      left = int(rng.integers(0, width - crop_w + 1))
      return top, left, crop_h, crop_w
  aspect = min(max(width / height, ratio[0]), ratio[1])
  crop_w = min(width, round(height * aspect))
  crop_h = min(height, round(width / aspect))
  return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def random_resized_crop(image: np.ndarray, image_size: int, scale, ratio,
                        rng: np.random.Generator, interpolation: str = 'bilinear'):
  """A `random_resized_crop_box` of `image`, resized to `image_size` squared."""
  top, left, crop_h, crop_w = random_resized_crop_box(
      *image.shape[:2], scale, ratio, rng)
  crop = image[top:top + crop_h, left:left + crop_w]
  return np.asarray(Image.fromarray(crop).resize((image_size, image_size),
                                                 RESAMPLING[interpolation]))


def random_flip(image: np.ndarray, rng: np.random.Generator):
  """Mirrors left-right with probability 0.5."""
  return image[:, ::-1] if rng.random() < 0.5 else image


@dataclasses.dataclass(frozen=True)
class Resize(grain.transforms.Map):
  """`resize` on the 'image' of an example dict."""
  image_size: int
  resize_size: int = 0
  interpolation: str = 'bilinear'

  @classmethod
  def from_config(cls, data_config) -> 'Resize':
    """`config.data`'s resize (a run saved before data.interpolation was bilinear)."""
    return cls(data_config.image_size, data_config.resize_size,
               data_config.get('interpolation') or 'bilinear')

  def map(self, element):
    image = resize(element['image'], self.image_size, self.resize_size, self.interpolation)
    return {**element, 'image': np.ascontiguousarray(image)}


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop(grain.transforms.RandomMap):
  """`random_resized_crop` on the 'image' of an example (not `Resize`)."""
  image_size: int
  scale: tuple[float, float] = (0.08, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  interpolation: str = 'bilinear'

  def random_map(self, element, rng: np.random.Generator):
    image = random_resized_crop(element['image'], self.image_size, self.scale,
                                self.ratio, rng, self.interpolation)
    return {**element, 'image': np.ascontiguousarray(image)}


@dataclasses.dataclass(frozen=True)
class Augment(grain.transforms.RandomMap):
  """Train-time augmentation: random crop with padding, optional flip."""
  crop_padding: int = 0
  horizontal_flip: bool = False

  def random_map(self, element, rng: np.random.Generator):
    image = random_crop(element['image'], self.crop_padding, rng)
    if self.horizontal_flip:
      image = random_flip(image, rng)
    return {**element, 'image': np.ascontiguousarray(image)}
