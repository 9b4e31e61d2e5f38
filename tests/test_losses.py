"""Per-example losses against soft targets: cross-entropy, focal, class-balanced weights."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcls.training.losses import (class_weights_from_counts, cross_entropy, focal_loss, make_loss_fn)


def _logits_and_targets(n=16, classes=6, seed=0):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(0, 3, (n, classes)), jnp.float32)
  labels = rng.integers(0, classes, n)
  return logits, jax.nn.one_hot(labels, classes), labels


def test_cross_entropy_smooths_targets_as_optax():
  logits, targets, labels = _logits_and_targets()
  smoothing, classes = 0.1, targets.shape[1]
  # optax.smooth_labels: the true class gets 1 - s + s / K, every other class s / K.
  smoothed = np.where(np.asarray(targets) == 1, 1 - smoothing + smoothing / classes,
                      smoothing / classes)
  manual = -(smoothed * jax.nn.log_softmax(logits)).sum(-1)
  np.testing.assert_allclose(cross_entropy(logits, targets, smoothing), manual, rtol=1e-5)
  np.testing.assert_allclose(make_loss_fn('cross_entropy', label_smoothing=smoothing)(
      logits, targets), manual, rtol=1e-5)


def test_focal_loss_with_gamma_zero_is_cross_entropy():
  logits, targets, _ = _logits_and_targets()
  soft = 0.7 * targets + 0.3 * targets[::-1]
  for t in (targets, soft):
    np.testing.assert_allclose(focal_loss(logits, t, gamma=0.0), optax.softmax_cross_entropy(
        logits, t), rtol=1e-6)
    np.testing.assert_allclose(make_loss_fn('focal', focal_gamma=0.0, label_smoothing=0.1)(
        logits, t), cross_entropy(logits, t, 0.1), rtol=1e-6)


def test_focal_loss_down_weights_confident_correct_examples():
  targets = jax.nn.one_hot(jnp.array([0, 0]), 3)
  logits = jnp.array([[6.0, 0.0, 0.0], [0.2, 0.0, 0.0]])  # Confident, then hesitant, both right.
  ratio = focal_loss(logits, targets, gamma=2.0) / optax.softmax_cross_entropy(logits, targets)
  p = jax.nn.softmax(logits)[:, 0]
  np.testing.assert_allclose(ratio, (1 - p) ** 2, rtol=1e-5)
  assert ratio[0] < 1e-4 < ratio[1]


def test_focal_alpha_weighs_each_class():
  logits, targets, labels = _logits_and_targets()
  alpha = np.linspace(0.5, 2.0, targets.shape[1])
  np.testing.assert_allclose(focal_loss(logits, targets, 2.0, alpha),
                             alpha[labels] * focal_loss(logits, targets, 2.0), rtol=1e-6)


@pytest.mark.parametrize('gamma', [0.0, 0.5, 2.0])
def test_focal_loss_gradients_are_finite_even_for_certain_predictions(gamma):
  logits = jnp.array([[80.0, -80.0, 0.0], [0.0, 0.0, 0.0], [-50.0, 50.0, 3.0]])
  targets = jnp.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
  grads = jax.grad(lambda x: make_loss_fn('focal', focal_gamma=gamma, label_smoothing=0.1)(
      x, targets).sum())(logits)
  assert np.isfinite(grads).all()


def test_class_weights_scale_each_example_by_its_mixed_class_weight():
  logits, targets, labels = _logits_and_targets()
  weights = np.linspace(0.2, 3.0, targets.shape[1]).astype(np.float32)
  plain = make_loss_fn('cross_entropy')
  weighted = make_loss_fn('cross_entropy', class_weights=weights)
  np.testing.assert_allclose(weighted(logits, targets), weights[labels] * plain(logits, targets),
                             rtol=1e-6)
  mixed = 0.7 * targets + 0.3 * targets[::-1]
  np.testing.assert_allclose(weighted(logits, mixed), (0.7 * weights[labels] + 0.3 * weights[
      labels[::-1]]) * plain(logits, mixed), rtol=1e-5)
  focal = make_loss_fn('focal', class_weights=weights)
  np.testing.assert_allclose(focal(logits, targets), weights[labels] * make_loss_fn('focal')(
      logits, targets), rtol=1e-6)


def test_class_weights_from_counts_inverse_frequency_and_effective_number():
  counts = [1000, 100, 10]
  inverse = class_weights_from_counts(counts, 'inverse_frequency')
  np.testing.assert_allclose(inverse.sum(), 3.0, rtol=1e-6)
  np.testing.assert_allclose(inverse / inverse[0], [1, 10, 100], rtol=1e-5)
  beta = 0.99
  effective = class_weights_from_counts(counts, 'effective_number', beta)
  expected = (1 - beta) / (1 - beta ** np.array(counts, float))
  np.testing.assert_allclose(effective, expected * 3 / expected.sum(), rtol=1e-5)
  assert effective[0] < effective[1] < effective[2]
  np.testing.assert_allclose(class_weights_from_counts(counts, 'effective_number', 0.0), 1.0)
  with pytest.raises(ValueError, match='at least one example'):
    class_weights_from_counts([5, 0])


def test_losses_are_jittable_and_train_towards_the_soft_targets():
  _, targets, _ = _logits_and_targets()
  soft = 0.6 * targets + 0.4 * targets[::-1]
  loss_fn = make_loss_fn('focal', focal_gamma=2.0, label_smoothing=0.1,
                         class_weights=np.ones(targets.shape[1]))
  step = jax.jit(jax.value_and_grad(lambda x: loss_fn(x, soft).mean()))
  logits = jnp.zeros_like(targets)
  first, _ = step(logits)
  for _ in range(50):
    loss, grads = step(logits)
    logits = logits - 2.0 * grads
  assert loss < 0.5 * first


def test_unknown_loss_is_rejected():
  with pytest.raises(ValueError, match='focal'):
    make_loss_fn('hinge')
