"""Images/s of the train augmentation paths: the host (Grain) and the device (jit).

    python benchmarks/bench_augment.py [--sizes 32,224] [--seconds 3]

Host: `train_batches` over in-memory photos (resize or random resized crop,
crop padding, flip) with the default `data.num_threads`. Device:
`device_augment.augment_batch` under `jax.jit` on the default backend,
compile excluded. On a CPU both compete for the same cores as the model.
"""

import time

from absl import app
from absl import flags
import jax
import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_image

from jaxcls.config import default_config, resolve_automatic_fields
from jaxcls.data import device_augment
from jaxcls.data import pipeline
from jaxcls.data import sources

_SIZES = flags.DEFINE_list('sizes', ['32', '224'], 'Image sides to measure.')
_SECONDS = flags.DEFINE_float('seconds', 3.0, 'Minimum measuring time per case.')

_DEVICE_CASES = {
    'colour jitter + grayscale': dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                                      grayscale_prob=0.2),
    'affine + erasing': dict(affine_degrees=15.0, affine_translate=0.1, affine_scale=(0.9, 1.1),
                             erasing_prob=0.25),
    'all but policy': dict(affine_degrees=15.0, affine_translate=0.1, affine_scale=(0.9, 1.1),
                           affine_shear=10.0, brightness=0.4, contrast=0.4, saturation=0.4,
                           hue=0.1, grayscale_prob=0.2, blur_prob=0.5, noise_std=0.05,
                           erasing_prob=0.25),
    'randaugment n=2 m=9': dict(policy='randaugment'),
    'trivialaugment': dict(policy='trivialaugment'),
}


def _photos(count: int, side: int) -> np.ndarray:
  """`count` square crops of scikit-learn's sample photos at `side` (source of 1.14x side)."""
  source_side = max(side, round(side * 256 / 224))
  crops, rng = [], np.random.default_rng(0)
  images = [load_sample_image(name) for name in ('china.jpg', 'flower.jpg')]
  for i in range(count):
    image = images[i % 2]
    top, left = rng.integers(0, 427 - 200), rng.integers(0, 640 - 200)
    crop = image[top:top + 200, left:left + 200]
    crops.append(np.asarray(Image.fromarray(crop).resize((source_side, source_side))))
  return np.stack(crops)


def _timed(run_once, seconds: float) -> float:
  """Seconds per call of `run_once`, over at least `seconds` after one warm-up call."""
  run_once()
  calls, started = 0, time.perf_counter()
  while (elapsed := time.perf_counter() - started) < seconds or calls < 2:
    run_once()
    calls += 1
  return elapsed / calls


def host_images_per_second(side: int, seconds: float, random_resized_crop: bool) -> float:
  config = resolve_automatic_fields(default_config()).data
  config.image_size = side
  config.augment.update(random_resized_crop=random_resized_crop, horizontal_flip=True,
                        random_crop_padding=side // 16)
  images = _photos(512, side)
  source = sources.ArraySource(images, np.zeros(len(images), np.int32))
  batch = 64
  epoch = [0]

  def one_epoch():
    epoch[0] += 1
    for _ in pipeline.train_batches(source, config, global_batch_size=batch, seed=0,
                                    epoch=epoch[0]):
      pass

  return len(images) // batch * batch / _timed(one_epoch, seconds)


def device_images_per_second(side: int, batch: int, fields: dict, seconds: float) -> float:
  config = default_config().data.augment
  config.update(fields)
  images = jax.device_put(_photos(batch, side)[:, :side, :side])
  fn = jax.jit(lambda k, x: device_augment.augment_batch(k, x, config))
  key = [jax.random.key(0)]

  def one_batch():
    key[0] = jax.random.fold_in(key[0], 1)
    fn(key[0], images).block_until_ready()

  return batch / _timed(one_batch, seconds)


def main(argv):
  del argv
  seconds = _SECONDS.value
  print(f'backend {jax.default_backend()}, {jax.device_count()} device(s): '
        f'{jax.devices()[0].device_kind}')
  for side in map(int, _SIZES.value):
    for rrc in (False, True):
      name = 'random resized crop' if rrc else 'resize'
      rate = host_images_per_second(side, seconds, rrc)
      print(f'{side:4d}px host   {name} + crop padding + flip: {rate:9.0f} images/s')
    batch = 128 if side <= 64 else 32
    for name, fields in _DEVICE_CASES.items():
      rate = device_images_per_second(side, batch, fields, seconds)
      print(f'{side:4d}px device {name} (batch {batch}): {rate:9.0f} images/s')


if __name__ == '__main__':
  app.run(main)
