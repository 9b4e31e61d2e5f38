"""Mixup and CutMix: the bookkeeping of lambdas, boxes, partners and soft targets.

Compiling the Beta sampler takes seconds, so one per-example draw of many
examples (`_draw`) serves the tests of the bookkeeping, which apply it to
batches with `mix`.
"""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcls.config import default_config
from jaxcls.data import mixing
from jaxcls.data.mixing import Mixup, box_lambda, cutmix_box, dominant_label_accuracy, mix

_NUM_CLASSES = 5
_SMOOTHING = 0.1
_HEIGHT, _WIDTH = 12, 10
_BATCH = 64
_PER_EXAMPLE = Mixup(mixup_alpha=0.4, cutmix_alpha=2.0, prob=0.8, switch_prob=0.25, mode='elem',
                     label_smoothing=_SMOOTHING)


@functools.lru_cache
def _draw(size=40000):
  """One per-example draw of `size` examples of 12 x 10 images."""
  return jax.jit(_PER_EXAMPLE.sample, static_argnums=(1, 2, 3))(jax.random.PRNGKey(0), size,
                                                                 _HEIGHT, _WIDTH)


def _mixed(images, targets):
  """`_PER_EXAMPLE` applied to a batch, with the first examples of the shared draw."""
  draw = jax.tree.map(lambda x: x[:len(images)], _draw())
  return draw, jax.jit(mix, static_argnums=3)(draw, images, targets, _SMOOTHING)


def _batch(n=_BATCH):
  """Image i is the constant i + 1, so every pixel tells which image it came from.

  The targets are those of a two-headed model: {'digit': 5 classes, 'parity': 2}.
  """
  images = np.broadcast_to(np.arange(1, n + 1, dtype=np.float32)[:, None, None, None],
                           (n, _HEIGHT, _WIDTH, 3)).copy()
  labels = {'digit': np.arange(n) % _NUM_CLASSES, 'parity': np.arange(n) % 2}
  targets = {'digit': jax.nn.one_hot(labels['digit'], _NUM_CLASSES),
             'parity': jax.nn.one_hot(labels['parity'], 2)}
  return jnp.asarray(images), targets, labels


def _partner(x):
  return np.asarray(x)[::-1]


def test_draws_follow_prob_switch_prob_and_beta_alpha_alpha():
  draw = _draw()
  applied, use_cutmix = np.asarray(draw.applied), np.asarray(draw.use_cutmix)
  sampled = np.asarray(draw.sampled_lam)
  assert abs(applied.mean() - 0.8) < 0.01
  assert abs(use_cutmix.mean() - 0.25) < 0.01
  for alpha, lam in ((0.4, sampled[~use_cutmix]), (2.0, sampled[use_cutmix])):
    assert abs(lam.mean() - alpha / (2 * alpha)) < 0.01
    assert abs(lam.var() - 1 / (4 * (2 * alpha + 1))) < 0.005  # Var of Beta(a, a).
  np.testing.assert_array_equal(np.asarray(draw.lam)[~applied], 1.0)
  np.testing.assert_array_equal(draw.lam[applied & ~use_cutmix],
                                draw.sampled_lam[applied & ~use_cutmix])
  assert len(np.unique(sampled)) > 39000  # One lambda per example.


def test_cutmix_lambda_is_the_share_of_pixels_each_image_keeps():
  images, targets, _ = _batch()
  draw, out = _mixed(images, targets)
  cutmix = np.asarray(draw.applied & draw.use_cutmix)
  assert cutmix.sum() > 5
  mixed, own = np.asarray(out.images), np.asarray(images)
  assert ((mixed == own) | (mixed == _partner(own)))[cutmix].all()
  pasted = (mixed != own).any(-1).mean(axis=(1, 2))
  np.testing.assert_allclose(out.lam[cutmix], 1.0 - pasted[cutmix], atol=1e-6)


def test_cutmix_boxes_clipped_at_the_border_correct_lambda_to_the_clipped_area():
  height, width = 16, 12
  lam = jnp.full((2000,), 0.19)  # Nominal box 14 x 10 (sides sqrt(0.81) * 16, * 12).
  box = cutmix_box(jax.random.PRNGKey(1), lam, height, width)
  top, bottom, left, right = (np.asarray(b) for b in box)
  assert (top >= 0).all() and (bottom <= height).all()
  assert (left >= 0).all() and (right <= width).all()
  area = (bottom - top) * (right - left)
  assert area.max() == 14 * 10 and (area < 14 * 10).mean() > 0.5  # Most are clipped.
  np.testing.assert_allclose(box_lambda(box, height, width), 1.0 - area / (height * width),
                             rtol=1e-6)


def test_mixup_images_are_the_convex_combination_with_the_sampled_lambda():
  images, targets, _ = _batch()
  draw, out = _mixed(images, targets)
  blended = np.asarray(draw.applied & ~draw.use_cutmix)
  unmixed = ~np.asarray(draw.applied)
  assert blended.sum() > 20 and unmixed.sum() > 5
  lam = np.asarray(draw.sampled_lam)[:, None, None, None]
  expected = lam * images + (1 - lam) * _partner(images)
  np.testing.assert_allclose(np.asarray(out.images)[blended], expected[blended], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(out.images)[unmixed], np.asarray(images)[unmixed])


def test_every_target_head_is_mixed_with_the_same_lambda_and_partner_after_smoothing():
  images, targets, _ = _batch()
  _, out = _mixed(images, targets)
  lam = np.asarray(out.lam)[:, None]
  for head, onehot in targets.items():
    smoothed = optax.smooth_labels(onehot, _SMOOTHING)
    np.testing.assert_allclose(out.targets[head], lam * smoothed + (1 - lam) * _partner(smoothed),
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.targets[head]).sum(-1), 1.0, atol=1e-6)
    # Smoothing and mixing commute: the loss may smooth instead.
    mixed_onehot = lam * onehot + (1 - lam) * _partner(onehot)
    np.testing.assert_allclose(out.targets[head], optax.smooth_labels(mixed_onehot, _SMOOTHING),
                               atol=1e-6)


def test_dominant_label_is_the_class_with_the_larger_weight():
  images, targets, labels = _batch()
  _, out = _mixed(images, targets)
  lam = np.asarray(out.lam)
  assert (lam < 0.5).any() and (lam > 0.5).any()
  for head, head_labels in labels.items():
    expected = np.where(lam >= 0.5, head_labels, head_labels[::-1])
    np.testing.assert_array_equal(out.dominant_labels[head], expected)
    logits = jax.nn.one_hot(expected, targets[head].shape[1])
    np.testing.assert_array_equal(dominant_label_accuracy(logits, out.dominant_labels[head]), 1.0)


def test_uint8_images_mix_to_float32_as_their_values_do():
  images, targets, _ = _batch()
  _, from_uint8 = _mixed((images * 3).astype(jnp.uint8), targets)
  _, from_float = _mixed(images * 3, targets)
  assert from_uint8.images.dtype == jnp.float32
  np.testing.assert_array_equal(from_uint8.images, from_float.images)


def test_batch_mode_mixes_every_example_with_one_lambda_and_one_box():
  images, targets, _ = _batch()
  mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode='batch')
  out = jax.jit(mixup.__call__)(jax.random.PRNGKey(2), images, targets)
  assert len(set(np.asarray(out.lam).tolist())) == 1 and out.lam[0] < 1
  pasted = np.asarray(out.images) != np.asarray(images)
  assert (pasted == pasted[:1]).all()
  np.testing.assert_allclose(out.lam, 1 - pasted[0].any(-1).mean(), atol=1e-6)


@pytest.mark.parametrize('mixup', [Mixup(mixup_alpha=0.0, cutmix_alpha=0.0),
                                   Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.0)],
                         ids=['alphas_zero', 'prob_zero'])
def test_disabled_mixing_is_the_identity(mixup):
  images, targets, labels = _batch()
  out = jax.jit(mixup.__call__)(jax.random.PRNGKey(0), images, targets)
  np.testing.assert_array_equal(out.images, images)
  for head in targets:
    np.testing.assert_array_equal(out.targets[head], targets[head])
    np.testing.assert_array_equal(out.dominant_labels[head], labels[head])
  np.testing.assert_array_equal(out.lam, 1.0)


def test_invalid_settings_are_rejected():
  with pytest.raises(ValueError, match='mode'):
    Mixup(mode='pair')
  with pytest.raises(ValueError, match='prob'):
    Mixup(prob=1.5)


_SHARDED_SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from jaxcls.data.mixing import Mixup

    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    targets = {'a': jax.nn.one_hot(rng.integers(0, 10, 16), 10),
               'b': jax.nn.one_hot(rng.integers(0, 3, 16), 3)}
    sharded = NamedSharding(Mesh(np.asarray(jax.devices()), ('data',)), PartitionSpec('data'))
    mixup = Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, mode='elem', label_smoothing=0.1)
    mix = jax.jit(mixup.__call__)
    key = jax.random.PRNGKey(7)
    one = mix(key, jnp.asarray(images), targets)
    four = mix(key, jax.device_put(images, sharded), jax.device_put(targets, sharded))
    assert len(four.images.sharding.device_set) == 4, four.images.sharding
    # The same draws: equal to the last bit but for the rounding of a fused multiply-add,
    # which XLA may vectorise differently for a quarter of the batch (seen: 1 element in 48).
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=0)
    assert (np.asarray(one.lam) < 1).any()
    print('OK')
''')


def test_batch_sharded_over_four_devices_mixes_as_unsharded():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', _SHARDED_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith('OK')


def test_mixing_stops_from_off_epoch_on():
  config = default_config().mixup
  config.mixup_alpha, config.off_epoch = 0.2, 3
  mixup = mixing.from_config(config)
  assert [mixing.mixup_at_epoch(mixup, config, e) for e in range(5)] == [mixup] * 3 + [None] * 2
  config.off_epoch = 0  # Mixing to the end.
  assert mixing.mixup_at_epoch(mixup, config, 100) == mixup
