"""Specification of train augmentation: host ops in Grain, device ops under jit."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps
from sklearn.datasets import load_sample_image

from jaxcls.config import ConfigError, default_config, resolve_automatic_fields, validate
from jaxcls.data import device_augment
from jaxcls.data import pipeline
from jaxcls.data import sources
from jaxcls.data import transforms


@pytest.fixture(scope='module')
def digits():
  """The real digits train split (32x32 gray as RGB uint8)."""
  data_config = resolve_automatic_fields(default_config()).data
  return sources.load_dataset(data_config, None).train


@pytest.fixture(scope='module')
def photos():
  """Eight 32x32 colour crops of scikit-learn's sample photos."""
  crops = []
  for name in ('china.jpg', 'flower.jpg'):
    image = load_sample_image(name)
    for top, left in ((0, 0), (100, 300), (200, 100), (300, 400)):
      crop = image[top:top + 96, left:left + 96]
      crops.append(np.asarray(Image.fromarray(crop).resize((32, 32))))
  return np.stack(crops)


def augment_config(**fields):
  """`config.data.augment` with only `fields` switched on."""
  config = default_config().data.augment
  config.update(fields)
  return config


def augment(images, key=0, **fields):
  config = augment_config(**fields)
  fn = jax.jit(lambda k, x: device_augment.augment_batch(k, x, config))
  return np.asarray(fn(jax.random.key(key), images))


ALL_DEVICE_OPS = dict(affine_degrees=15.0, affine_translate=0.1, affine_scale=(0.9, 1.1),
                      affine_shear=10.0, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                      grayscale_prob=0.2, blur_prob=0.5, noise_std=0.05, erasing_prob=0.5)


# ------------------------------------------------------------------ host ---

def test_random_resized_crop_box_respects_scale_and_ratio():
  rng = np.random.default_rng(0)
  for _ in range(200):
    top, left, h, w = transforms.random_resized_crop_box(64, 96, (0.2, 0.6), (0.5, 2.0), rng)
    assert 0 <= top and top + h <= 64 and 0 <= left and left + w <= 96
    # Rounding each side to a pixel moves the area by at most a row and a column.
    assert 0.2 * 64 * 96 - (h + w) <= h * w <= 0.6 * 64 * 96 + (h + w)
    assert 0.5 - 1 / h <= w / h <= 2.0 + 1 / h


def test_random_resized_crop_falls_back_to_the_center_crop_of_the_nearest_ratio():
  # A square image holds no crop of >= 99% of its area at aspect 2..3.
  box = transforms.random_resized_crop_box(32, 32, (0.99, 1.0), (2.0, 3.0),
                                           np.random.default_rng(0))
  assert box == (8, 0, 16, 32)


def test_random_resized_crop_changes_train_images_but_never_eval_images(digits):
  config = resolve_automatic_fields(default_config()).data
  config.augment.update(random_crop_padding=0, random_resized_crop_scale=(0.3, 0.7))
  source = sources.ArraySource(digits.images[:64], digits.labels[:64])

  def train_images(random_resized_crop):
    config.augment.random_resized_crop = random_resized_crop
    batches = list(pipeline.train_batches(source, config, global_batch_size=32, seed=0, epoch=0))
    assert all(b['image'].shape == (32, 32, 32, 3) for b in batches)
    return np.concatenate([b['image'] for b in batches])

  plain, cropped = train_images(False), train_images(True)
  assert cropped.dtype == np.uint8
  np.testing.assert_array_equal(train_images(True), cropped)  # Deterministic.
  # The crop has its own seed, so the example order is the plain one; a zoom
  # to 30-70% of the area changes every digit.
  assert all(not np.array_equal(a, b) for a, b in zip(cropped, plain))
  evaluated = np.concatenate([b['image'] for b in pipeline.eval_batches(
      source, config, global_batch_size=32)])
  np.testing.assert_array_equal(evaluated, source.images)


def test_eval_batches_are_never_augmented(digits):
  config = resolve_automatic_fields(default_config()).data
  config.augment.update(random_resized_crop=True, horizontal_flip=True, policy='randaugment',
                        **ALL_DEVICE_OPS)
  source = sources.ArraySource(digits.images[:40], digits.labels[:40])
  evaluated = np.concatenate([b['image'] for b in pipeline.eval_batches(
      source, config, global_batch_size=8)])
  np.testing.assert_array_equal(evaluated, source.images)


# ---------------------------------------------------------------- device ---

def test_device_ops_change_images_keep_shape_dtype_and_range_and_follow_the_key(digits):
  images = digits.images[:16]
  config = augment_config(**ALL_DEVICE_OPS)
  fn = jax.jit(lambda k, x: device_augment.augment_batch(k, x, config))
  out = np.asarray(fn(jax.random.key(0), images))
  assert out.shape == images.shape and out.dtype == np.uint8
  assert all(not np.array_equal(a, b) for a, b in zip(out, images))
  np.testing.assert_array_equal(np.asarray(fn(jax.random.key(0), images)), out)
  assert not np.array_equal(np.asarray(fn(jax.random.key(1), images)), out)


def test_nothing_switched_on_returns_the_batch_itself(digits):
  config = augment_config()
  assert not device_augment.enabled(config)
  images = digits.images[:4]
  assert device_augment.augment_batch(jax.random.key(0), images, config) is images


def test_affine_without_rotation_shift_or_shear_is_the_identity(photos):
  image = jnp.asarray(photos[0], jnp.float32)
  np.testing.assert_array_equal(np.asarray(jax.jit(device_augment.affine)(image)), image)


def test_affine_rotation_by_90_degrees_is_a_quarter_turn(photos):
  image = jnp.asarray(photos[0], jnp.float32)
  out = np.asarray(jax.jit(lambda x: device_augment.affine(x, degrees=90.0))(image))
  np.testing.assert_allclose(out, np.rot90(photos[0]), atol=1e-2)


def test_hue_jitter_rotates_hue_only(photos, digits):
  images = np.concatenate([photos, digits.images[:8]])
  out = augment(images, hue=0.5).astype(int)
  colour, gray = out[:len(photos)], out[len(photos):]
  assert all(not np.array_equal(a, b) for a, b in zip(colour, photos))
  # Value (the largest channel) is what HSV keeps...
  np.testing.assert_allclose(colour.max(-1), photos.max(-1), atol=1)
  # ...and gray pixels have no hue to turn.
  np.testing.assert_allclose(gray, digits.images[:8], atol=1)


def test_grayscale_gives_equal_channels(photos):
  out = augment(photos, grayscale_prob=1.0)
  assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
  assert not np.array_equal(out, photos)


def test_random_erasing_boxes_cover_the_configured_area():
  white = np.full((64, 32, 32, 3), 255, np.uint8)
  out = augment(white, erasing_prob=1.0, erasing_scale=(0.1, 0.3), erasing_ratio=(0.5, 2.0),
                erasing_value=0.0)
  for image in out:
    erased = image[..., 0] == 0
    rows, cols = np.flatnonzero(erased.any(1)), np.flatnonzero(erased.any(0))
    # One filled rectangle...
    assert erased.sum() == len(rows) * len(cols)
    assert erased[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    # ...of the configured area, give or take the rounding of each side.
    slack = len(rows) + len(cols)
    assert 0.1 * 32 * 32 - slack <= erased.sum() <= 0.3 * 32 * 32 + slack


def test_gaussian_noise_has_the_configured_std():
  gray = np.full((8, 32, 32, 3), 128.0, np.float32)
  out = augment(gray, noise_std=0.1)
  assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 255
  np.testing.assert_allclose((out - gray).std(), 0.1 * 255, rtol=0.05)
  assert abs((out - gray).mean()) < 1


def test_blur_spreads_a_point_by_sigma_and_keeps_flat_images():
  images = np.zeros((2, 16, 16, 3), np.float32)
  images[0, 8, 8] = 255.0
  images[1] = 100.0
  out = augment(images, blur_prob=1.0, blur_sigma=(1.0, 1.0), blur_kernel_size=7)
  np.testing.assert_allclose(out[0].sum(), images[0].sum(), rtol=1e-4)
  # A unit-sigma Gaussian keeps 1 / (2 pi) of a point at its centre.
  np.testing.assert_allclose(out[0, 8, 8], 255 / (2 * np.pi), rtol=0.05)
  np.testing.assert_allclose(out[1], images[1], rtol=1e-5)  # Edges reflected, not darkened.


def test_equalize_matches_pil(photos):
  out = np.asarray(jax.jit(device_augment._equalize)(jnp.asarray(photos[1], jnp.float32) / 255))
  np.testing.assert_array_equal(np.round(out * 255),
                                np.asarray(ImageOps.equalize(Image.fromarray(photos[1]))))


def test_policy_enhance_ops_match_pil_within_one_level(photos):
  image = photos[2]

  def ops(x):
    gray = device_augment.pix.rgb_to_grayscale(x, keep_dims=True)
    return dict(
        Sharpness=device_augment._blend(device_augment._sharpness_degenerate(x), x, 1.8),
        Color=device_augment._blend(gray, x, 1.8),
        Contrast=device_augment._blend(gray.mean(), x, 1.8),
        autocontrast=device_augment._autocontrast(x))

  ours = jax.jit(ops)(jnp.asarray(image, jnp.float32) / 255)
  pil = Image.fromarray(image)
  expected = {name: getattr(ImageEnhance, name)(pil).enhance(1.8)
              for name in ('Sharpness', 'Color', 'Contrast')}
  expected['autocontrast'] = ImageOps.autocontrast(pil)
  for name, value in ours.items():
    np.testing.assert_allclose(np.round(np.asarray(value) * 255), np.asarray(expected[name]),
                               atol=1, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize('policy', ['randaugment', 'trivialaugment'])
def test_policies_change_images_and_follow_the_key(photos, policy):
  config = augment_config(policy=policy, policy_num_ops=2, policy_magnitude=9)
  fn = jax.jit(lambda k, x: device_augment.augment_batch(k, x, config))
  out = np.asarray(fn(jax.random.key(0), photos))
  assert out.shape == photos.shape and out.dtype == np.uint8
  assert sum(not np.array_equal(a, b) for a, b in zip(out, photos)) >= 4
  np.testing.assert_array_equal(np.asarray(fn(jax.random.key(0), photos)), out)


_SHARDED_SCRIPT = textwrap.dedent('''
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxcls.config import default_config
    from jaxcls.data import device_augment
    assert jax.device_count() == 4
    config = default_config().data.augment
    config.update(affine_degrees=20.0, grayscale_prob=0.5, noise_std=0.05, erasing_prob=0.5)
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    mesh = Mesh(np.array(jax.devices()), ('data',))
    sharded = jax.device_put(images, NamedSharding(mesh, P('data')))
    fn = jax.jit(lambda k, x: device_augment.augment_batch(k, x, config))
    on_four = fn(jax.random.key(0), sharded)
    assert on_four.sharding.spec == P('data'), on_four.sharding
    on_one = fn(jax.random.key(0), jax.device_put(images, jax.devices()[0]))
    np.testing.assert_allclose(np.asarray(on_four, np.float32), np.asarray(on_one, np.float32),
                               atol=1)
    print('OK')
''')


@pytest.mark.slow
def test_four_devices_augment_the_sharded_batch_as_one_device_does():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', _SHARDED_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0 and 'OK' in result.stdout, result.stderr[-3000:]


# ---------------------------------------------------------------- config ---

def test_validate_names_each_bad_augment_field(config):
  config.data.augment.update(hue=0.7, erasing_scale=(0.5, 0.1), blur_kernel_size=4,
                             grayscale_prob=1.5, policy='autoaugment', affine_scale=(0.0, 1.0))
  with pytest.raises(ConfigError) as error:
    validate(config)
  message = str(error.value)
  for field in ('hue=0.7', 'erasing_scale=(0.5, 0.1)', 'blur_kernel_size=4', 'grayscale_prob=1.5',
                "policy='autoaugment'", 'affine_scale=(0.0, 1.0)'):
    assert f'config.data.augment.{field}:' in message, message
