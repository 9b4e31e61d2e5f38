"""Per-example classification losses against soft targets [batch, classes].

Soft targets cover one-hot labels, label smoothing and Mixup/CutMix alike.
Every loss returns one value per example, so the step chooses the reduction
(and the eval step can mask padding). `make_loss_fn` builds the one the
config asks for.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcls.errors import ConfigProblems

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
LOSSES = ('cross_entropy', 'focal')
CLASS_WEIGHTINGS = ('inverse_frequency', 'effective_number')

# Keeps (1 - p)^gamma differentiable where p rounds to 1 and gamma < 1.
_MIN_COMPLEMENT = 1e-12

# The rule of each loss setting, (ok(value), why): `make_loss_fn` and
# `class_weights_from_counts` raise on a value that breaks it, `config_errors` reports
# config.loss.FIELD's.
_RULES = {
    'name': (lambda v: v in LOSSES, f'expected one of {LOSSES}'),
    'focal_gamma': (lambda v: v >= 0, 'must be >= 0'),
    'focal_alpha': (lambda v: all(a >= 0 for a in v), 'must be >= 0'),
    'class_weights_beta': (lambda v: 0 <= v < 1, 'must be in [0, 1)'),
    'label_smoothing': (lambda v: 0 <= v < 1, 'must be in [0, 1)'),
}


def field_problems(values: dict) -> list[tuple[str, str]]:
  """(field, why) for each of `values` (setting -> value) that breaks its rule."""
  return [(field, _RULES[field][1]) for field, value in values.items()
          if not _RULES[field][0](value)]


def _raise_problems(owner: str, values: dict) -> None:
  problems = field_problems(values)
  if problems:
    raise ValueError(f'{owner}: ' + '; '.join(f'{field}={values[field]!r}: {why}'
                                            for field, why in problems))


def cross_entropy(logits: jax.Array, targets: jax.Array,
                  label_smoothing: float = 0.0) -> jax.Array:
  """-sum_c t_c log softmax(logits)_c, t = `optax.smooth_labels(targets)`."""
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def focal_loss(logits: jax.Array, targets: jax.Array, gamma: float = 2.0,
               alpha: float | Sequence[float] | jax.Array | None = None,
               label_smoothing: float = 0.0) -> jax.Array:
  """Softmax focal loss (Lin et al. 2017): -sum_c alpha_c (1 - p_c)^gamma t_c log p_c.

  `optax.sigmoid_focal_loss` treats every class as an independent binary
  problem (sigmoid), which does not fit single-label softmax classifiers, hence
  this form; with gamma = 0 and no alpha it is exactly the cross-entropy.

  Args:
    logits: [B, classes].
    targets: [B, classes] one-hot or soft targets.
    gamma: focusing parameter (>= 0): down-weights well-classified examples.
    alpha: a scalar or a [classes] weight per class; None: 1.
    label_smoothing: smoothing of the targets, as in `cross_entropy`.

  Returns:
    [B] losses.
  """
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  terms = targets * log_p
  if gamma:
    complement = jnp.maximum(-jnp.expm1(log_p), _MIN_COMPLEMENT)  # 1 - p, accurately.
    terms = terms * complement ** gamma
  if alpha is not None:
    terms = terms * jnp.asarray(alpha, terms.dtype)
  return -jnp.sum(terms, axis=-1)


def example_weights(targets: jax.Array, class_weights: jax.Array) -> jax.Array:
  """[B] weights sum_c w_c t_c: the class weight, mixed as the targets are."""
  return targets @ jnp.asarray(class_weights, targets.dtype)


def class_weights_from_counts(class_counts: Sequence[int], method: str = 'effective_number',
                              beta: float = 0.999) -> np.ndarray:
  """Per-class loss weights from the train split's class counts, summing to the class count.

  Args:
    class_counts: examples of each class.
    method: 'inverse_frequency' (w_c proportional to 1 / n_c) or
      'effective_number' (Cui et al. 2019: w_c proportional to
      (1 - beta) / (1 - beta^n_c), between uniform at beta = 0 and inverse
      frequency as beta -> 1).
    beta: the effective-number hyperparameter in [0, 1).

  Returns:
    float32 [classes], normalised so that the weights sum to the number of
    classes (uniform weights are all 1), as Cui et al. do.
  """
  counts = np.asarray(class_counts, np.float64)
  if counts.ndim != 1 or (counts <= 0).any():
    raise ValueError(f'class_counts={list(class_counts)}: every class needs at least one example')
  if method == 'inverse_frequency':
    weights = 1.0 / counts
  elif method == 'effective_number':
    _raise_problems('class_weights_from_counts', {'class_weights_beta': beta})
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
  else:
    raise ValueError(f'method={method!r}: expected one of {CLASS_WEIGHTINGS}')
  return (weights * len(counts) / weights.sum()).astype(np.float32)


def make_loss_fn(name: str = 'cross_entropy', *, label_smoothing: float = 0.0,
                 focal_gamma: float = 2.0,
                 focal_alpha: float | Sequence[float] | None = None,
                 class_weights: Sequence[float] | np.ndarray | None = None) -> LossFn:
  """The configured loss as `fn(logits, soft_targets) -> [B] per-example loss`.

  Args:
    name: 'cross_entropy' or 'focal'.
    label_smoothing: smoothing applied to the targets inside the loss. When
      Mixup/CutMix is on, give the smoothing to either `Mixup` or here, not both.
    focal_gamma: the focal loss's gamma.
    focal_alpha: the focal loss's alpha (scalar or per class); None: 1.
    class_weights: [classes] weights (see `class_weights_from_counts`); each
      example's loss is multiplied by sum_c w_c t_c over its unsmoothed
      targets. None: unweighted.

  Returns:
    A pure, jittable function; the step reduces its output (e.g. `.mean()`).
  """
  _raise_problems('make_loss_fn', dict(name=name, label_smoothing=label_smoothing,
                                      focal_gamma=focal_gamma))
  weights = None if class_weights is None else np.asarray(class_weights, np.float32)
  alpha = None if focal_alpha is None else np.asarray(focal_alpha, np.float32)

  def loss_fn(logits: jax.Array, targets: jax.Array) -> jax.Array:
    if weights is not None and weights.shape != (logits.shape[-1],):
      raise ValueError(f'class_weights has shape {weights.shape}, the logits {logits.shape}')
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    if name == 'focal':
      losses = focal_loss(logits, targets, focal_gamma, alpha, label_smoothing)
    else:
      losses = cross_entropy(logits, targets, label_smoothing)
    if weights is not None:
      losses = losses * example_weights(targets, weights)
    return losses

  return loss_fn


def config_errors(loss_config, tasks_config) -> list[str]:
  """What is wrong with `config.loss`, also against `config.tasks` (per-task heads)."""
  c, p = loss_config, ConfigProblems('loss', loss_config)
  for field, why in field_problems({f: c[f] for f in ('name', 'focal_gamma', 'focal_alpha')}):
    p.report(field, why)
  p.check(c.class_weights in ('none', *CLASS_WEIGHTINGS), 'class_weights',
          f"expected 'none' or one of {CLASS_WEIGHTINGS}")
  for field, why in field_problems({'class_weights_beta': c.class_weights_beta}):
    p.report(field, why)
  heads = bool(tasks_config.names) and tasks_config.mode == 'heads'
  p.check(not heads or c.class_weights == 'none', 'class_weights',
          "weights the combined classes, which tasks.mode='heads' does not train on")
  p.check(not heads or len(c.focal_alpha) <= 1, 'focal_alpha',
          "one alpha per combined class does not fit tasks.mode='heads': give one value or none")
  return p
