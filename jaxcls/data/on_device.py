"""A small train split held on the devices: batches gathered, cropped and flipped there.

For CIFAR-sized data the host pipeline (Grain's per-example maps, the crop
and flip, batching, the host-to-device copy) can cost more than the train
step of a small model, and the accelerator waits. With `data.on_device`, the
train split is resized once, copied to every device as uint8 (CIFAR-10's
50,000 32x32 images are 150 MB), and each step is one jitted gather by index
plus `device_augment.random_crop_flip`, out of a per-epoch order uploaded
once: nothing crosses the link per step but the step number.

The order is `pipeline.epoch_order`, the host pipeline's own, so the same
examples form the same batches (sampler and `epoch_examples` included); the
crop offsets and flips are drawn on the device, from the run's seed, the
epoch and the step, so they differ from the host's but a resumed run draws
the same ones again.
"""

from collections.abc import Iterator
import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding

from jaxcls.data import device_augment
from jaxcls.data import pipeline
from jaxcls.data import transforms


class DeviceTrainSet:
  """The train split resized to `data.image_size`, as uint8 arrays on every device."""

  def __init__(self, source, data_config, batch_sharding: NamedSharding, *, seed: int):
    if data_config.augment.random_resized_crop:  # config.validate says so first.
      raise ValueError('data.on_device: not with data.augment.random_resized_crop')
    if jax.process_count() > 1:
      raise ValueError(f'data.on_device=True runs on one process; this run has '
                       f'{jax.process_count()} (use the host pipeline, data.on_device=False)')
    resize = transforms.Resize.from_config(data_config)
    examples = [resize.map(source[i]) for i in range(len(source))]  # Decoded once, here.
    images = np.stack([example['image'] for example in examples])
    labels = np.asarray([example['label'] for example in examples], np.int32)
    del examples
    replicated = NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
    self.images = jax.device_put(images, replicated)
    self.labels = jax.device_put(labels, replicated)
    logging.info('data.on_device: %d train images, %.1f MB per device', len(labels),
                 images.nbytes / 2**20)
    self._source, self._config, self._seed = source, data_config, seed
    self._replicated = replicated
    augment = data_config.augment
    self._gather = jax.jit(
        functools.partial(_gather_batch, padding=augment.random_crop_padding,
                          flip=augment.horizontal_flip),
        static_argnames='batch_size',
        out_shardings=dict(image=batch_sharding, label=batch_sharding))

  def batches(self, *, global_batch_size: int, epoch: int,
              start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
    """Batches k = start_step, ... of one epoch, as `pipeline.train_batches` would order them."""
    order = pipeline.epoch_order(self._source, self._config, global_batch_size=global_batch_size,
                                 seed=self._seed, epoch=epoch)
    order = jax.device_put(order, self._replicated)
    key = jax.random.fold_in(jax.random.PRNGKey(self._seed), epoch)
    for step in range(start_step, order.shape[0] // global_batch_size):
      yield self._gather(self.images, self.labels, order, jnp.int32(step), key,
                         batch_size=global_batch_size)


def _gather_batch(images, labels, order, step, key, *, batch_size: int, padding: int,
                  flip: bool) -> dict[str, jax.Array]:
  indices = jax.lax.dynamic_slice_in_dim(order, step * batch_size, batch_size)
  batch_images = device_augment.random_crop_flip(
      jax.random.fold_in(key, step), images[indices], padding, flip)
  return dict(image=batch_images, label=labels[indices])
