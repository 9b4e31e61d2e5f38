"""`data.on_device`: the train split held on the device, batches gathered and augmented there."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcls import data
from jaxcls.training import parallel
from jaxcls.config import ConfigError, validate
from jaxcls.data import device_augment, pipeline
from jaxcls.data.on_device import DeviceTrainSet
from jaxcls.data.sources import ArraySource


def _source(n=96, size=8, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  return ArraySource(images, np.arange(n) % classes)


def _data_config(config, size=8):
  config.data.image_size = size
  config.data.augment.random_crop_padding = 0
  config.data.num_threads = 1
  return config.data


@pytest.mark.parametrize('sampler, epoch_examples', [('uniform', 0), ('uniform', 200),
                                                      ('balanced', 0)])
def test_epoch_order_is_the_order_the_host_pipeline_reads(config, sampler, epoch_examples):
  source = _source()
  data_config = _data_config(config)
  data_config.sampler, data_config.epoch_examples = sampler, epoch_examples
  order = pipeline.epoch_order(source, data_config, global_batch_size=16, seed=3, epoch=1)
  host = list(data.train_batches(source, data_config, global_batch_size=16, seed=3, epoch=1))
  assert len(order) == 16 * len(host)
  for k, batch in enumerate(host):
    np.testing.assert_array_equal(batch['image'], source.images[order[16 * k:16 * (k + 1)]])
    np.testing.assert_array_equal(batch['label'], source.labels[order[16 * k:16 * (k + 1)]])


def test_device_batches_equal_the_host_batches_without_random_augmentation(config):
  source = _source()
  data_config = _data_config(config)
  sharding = parallel.batch_sharded(parallel.data_mesh())
  device_set = DeviceTrainSet(source, data_config, sharding, seed=5)
  host = list(data.train_batches(source, data_config, global_batch_size=32, seed=5, epoch=2,
                                 start_step=1))
  on_device = list(device_set.batches(global_batch_size=32, epoch=2, start_step=1))
  assert len(on_device) == len(host) == 2
  for want, got in zip(host, on_device):
    assert got['image'].dtype == jnp.uint8 and got['image'].sharding == sharding
    np.testing.assert_array_equal(np.asarray(got['image']), want['image'])
    np.testing.assert_array_equal(np.asarray(got['label']), want['label'])


def test_device_set_resizes_once_to_the_image_size(config):
  source = _source(size=12)
  data_config = _data_config(config, size=6)
  device_set = DeviceTrainSet(source, data_config, parallel.batch_sharded(parallel.data_mesh()),
                              seed=0)
  assert device_set.images.shape == (96, 6, 6, 3)
  batch = next(device_set.batches(global_batch_size=8, epoch=0))
  assert batch['image'].shape == (8, 6, 6, 3)


def test_random_crop_flip_draws_every_offset_and_keeps_pixels():
  images = jnp.asarray(np.random.default_rng(0).integers(1, 256, (256, 6, 6, 3)), jnp.uint8)
  padding = 2
  out = np.asarray(device_augment.random_crop_flip(jax.random.PRNGKey(0), images, padding, True))
  padded = np.pad(np.asarray(images), ((0, 0), (padding,) * 2, (padding,) * 2, (0, 0)))
  seen, flipped = set(), 0
  for image, crop in zip(padded, out):
    matches = [(top, left, mirror) for top in range(2 * padding + 1)
               for left in range(2 * padding + 1) for mirror in (False, True)
               if np.array_equal(crop, (lambda c: c[:, ::-1] if mirror else c)(
                   image[top:top + 6, left:left + 6]))]
    assert matches, 'not a (mirrored) crop of the padded image'
    seen.add(matches[0][:2])
    flipped += matches[0][2]
  assert len(seen) == (2 * padding + 1) ** 2  # 25 offsets, 256 draws: each one appears.
  assert 80 < flipped < 176  # Binomial(256, 1/2): +-6 standard deviations.


def test_random_crop_flip_without_padding_or_flip_is_the_identity():
  images = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.uint8).reshape(2, 4, 4, 3)
  out = device_augment.random_crop_flip(jax.random.PRNGKey(1), images, 0, False)
  np.testing.assert_array_equal(out, images)


def test_on_device_with_random_resized_crop_is_a_config_error(config):
  config.data.on_device = True
  config.data.augment.random_resized_crop = True
  with pytest.raises(ConfigError, match=r'config.data.on_device=True: cannot be combined with '
                                        r'data.augment.random_resized_crop'):
    validate(config)


def test_a_run_on_device_trains_and_resumes_to_the_same_result(tiny_config, tmp_path):
  from jaxcls.experiment import train_and_evaluate  # pylint: disable=g-import-not-at-top
  tiny_config.data.on_device = True
  tiny_config.train.num_epochs, tiny_config.data.epoch_examples = 2, 768  # 6 steps an epoch.
  # Warm-up then a constant rate: a run stopped after epoch 1 and taken on to 2 is the 2-epoch run.
  tiny_config.optimizer.schedule, tiny_config.optimizer.warmup_epochs = 'constant', 0.5
  full = train_and_evaluate(tiny_config, str(tmp_path / 'full'))
  history = full['history']
  assert history[1]['train']['loss'] < history[0]['train']['loss'] - 0.1, history
  tiny_config.train.num_epochs = 1
  train_and_evaluate(tiny_config, str(tmp_path / 'resumed'))
  tiny_config.train.num_epochs = 2
  resumed = train_and_evaluate(tiny_config, str(tmp_path / 'resumed'), allow_config_change=True)
  np.testing.assert_allclose(resumed['history'][-1]['val']['loss'],
                             full['history'][-1]['val']['loss'], rtol=1e-5)
