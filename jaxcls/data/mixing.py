"""Mixup and CutMix on the device: timm's `Mixup` as a pure, jittable function.

`Mixup(...)(rng, images, targets)` mixes each example with its partner in the
batch flipped end to end (example i with example B-1-i), as timm does. The
flip needs no gather by index, so under `jax.jit` with the batch sharded over
devices XLA moves the partner's shard itself and the result is the one an
unsharded batch gives.

Per mixed example (timm's semantics, with `correct_lam=True`):
- lambda ~ Beta(alpha, alpha), alpha being `mixup_alpha` or `cutmix_alpha`;
  with both positive, CutMix is picked with probability `switch_prob`;
- mixing happens with probability `prob`, else lambda = 1 (the example as is);
- Mixup: image = lambda * image + (1 - lambda) * partner;
- CutMix: a box of sides sqrt(1 - lambda) times the image's, centred on a
  uniform pixel, is clipped to the image and the partner's pixels are pasted
  into it; lambda becomes 1 - box area / image area, so the targets weigh
  exactly the pixels each image contributes;
- targets (optionally label-smoothed) = lambda * own + (1 - lambda) * partner's.

In 'batch' mode one draw serves the whole batch (timm's default); in 'elem'
mode every example draws its own lambda, method and box. `Mixup.sample` does
the drawing and `mix` the deterministic rest.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxcls.errors import ConfigProblems, either


class MixedBatch(NamedTuple):
  """What `Mixup.__call__` returns."""
  # [B, H, W, C]: float32 for integer (uint8) input, else the input's dtype.
  images: jax.Array
  # Same pytree as the input targets; leaves float32 [B, classes], summing to 1
  # where the input's did.
  targets: Any
  # Same pytree; leaves int32 [B]: the class of the image with the larger
  # weight (own where lam >= 0.5, else the partner's), for "accuracy against
  # the dominant label".
  dominant_labels: Any
  # [B] float32: the weight of each example's own image and targets (1: unmixed).
  lam: jax.Array


class MixParams(NamedTuple):
  """One draw of `Mixup.sample`, each field [B] (in 'batch' mode, one value repeated)."""
  # The final weight of each example's own image and targets: 1 where nothing
  # is mixed, 1 - clipped box area / image area for CutMix.
  lam: jax.Array
  use_cutmix: jax.Array
  # (top, bottom, left, right) of the CutMix box; empty where CutMix is not applied.
  box: tuple[jax.Array, jax.Array, jax.Array, jax.Array]
  # Whether the example is mixed at all (probability `prob`).
  applied: jax.Array
  # The Beta(alpha, alpha) draw, before CutMix's correction and `prob`.
  sampled_lam: jax.Array


def cutmix_box(rng: jax.Array, lam: jax.Array, height: int,
               width: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """timm's `rand_bbox`: a box of sides sqrt(1 - lam) * (height, width), clipped.

  The centre is a uniform pixel, so boxes near the border lose their outside
  part; `box_lambda` gives the lambda of the box actually pasted.

  Args:
    rng: PRNG key.
    lam: [n] sampled lambdas in [0, 1].
    height: image height in pixels.
    width: image width in pixels.

  Returns:
    (top, bottom, left, right), each int32 [n]; rows top..bottom-1 and
    columns left..right-1 are inside (empty when top == bottom).
  """
  ratio = jnp.sqrt(1.0 - lam.astype(jnp.float32))
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  key_y, key_x = jax.random.split(rng)
  centre_y = jax.random.randint(key_y, lam.shape, 0, height)
  centre_x = jax.random.randint(key_x, lam.shape, 0, width)
  top = jnp.clip(centre_y - cut_h // 2, 0, height)
  bottom = jnp.clip(centre_y + cut_h // 2, 0, height)
  left = jnp.clip(centre_x - cut_w // 2, 0, width)
  right = jnp.clip(centre_x + cut_w // 2, 0, width)
  return top, bottom, left, right


def box_lambda(box: tuple[jax.Array, ...], height: int, width: int) -> jax.Array:
  """1 - box area / image area: the share of the pixels the image keeps."""
  top, bottom, left, right = box
  area = (bottom - top) * (right - left)
  return 1.0 - area.astype(jnp.float32) / (height * width)


def _box_mask(box: tuple[jax.Array, ...], height: int, width: int) -> jax.Array:
  """[n, H, W] booleans, True inside each example's box."""
  top, bottom, left, right = (b[:, None, None] for b in box)
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


MIX_MODES = ('batch', 'elem')

# The rule of each field of `Mixup`, (ok(value), why): Mixup raises on a value that breaks
# it, `config_errors` reports config.mixup.FIELD's.
_RULES = {
    'mixup_alpha': (lambda v: v >= 0, 'must be >= 0 (0: off)'),
    'cutmix_alpha': (lambda v: v >= 0, 'must be >= 0 (0: off)'),
    'prob': (lambda v: 0 <= v <= 1, 'must be a probability in [0, 1]'),
    'switch_prob': (lambda v: 0 <= v <= 1, 'must be a probability in [0, 1]'),
    'mode': (lambda v: v in MIX_MODES, f'expected {either(MIX_MODES)}'),
    'label_smoothing': (lambda v: 0 <= v < 1, 'must be in [0, 1)'),
}


def field_problems(values: dict[str, Any]) -> list[tuple[str, str]]:
  """(field, why) for each of `values` (Mixup's field -> value) that breaks its rule."""
  return [(field, _RULES[field][1]) for field, value in values.items()
          if not _RULES[field][0](value)]


@dataclasses.dataclass(frozen=True)
class Mixup:
  """timm's `Mixup(mixup_alpha, cutmix_alpha, prob, switch_prob, mode, label_smoothing)`.

  Every field is a Python constant, so an instance can be closed over by a
  jitted step; `__call__` is pure: the same key gives the same mixing.

  Attributes:
    mixup_alpha: Beta(alpha, alpha) parameter of Mixup's lambda; 0: no Mixup.
    cutmix_alpha: Beta(alpha, alpha) parameter of CutMix's lambda; 0: no CutMix.
    prob: probability of mixing a batch ('batch') or an example ('elem').
    switch_prob: with both alphas positive, the probability of CutMix
      rather than Mixup.
    mode: 'batch' (one lambda, method and box per batch) or 'elem' (per example).
    label_smoothing: smoothing of the targets before mixing (as
      `optax.smooth_labels`). Smoothing and mixing commute, so apply it here or
      in the loss, not in both.
  """
  mixup_alpha: float = 1.0
  cutmix_alpha: float = 0.0
  prob: float = 1.0
  switch_prob: float = 0.5
  mode: str = 'batch'
  label_smoothing: float = 0.0

  def __post_init__(self):
    problems = field_problems(dataclasses.asdict(self))
    if problems:
      raise ValueError('Mixup: ' + '; '.join(
          f'{field}={getattr(self, field)!r}: {why}' for field, why in problems))

  @property
  def enabled(self) -> bool:
    return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

  def sample(self, rng: jax.Array, batch_size: int, height: int, width: int) -> MixParams:
    """Draws the mixing of a batch of `batch_size` images of `height` x `width`."""
    draws = batch_size if self.mode == 'elem' else 1
    key_apply, key_switch, key_lam, key_box = jax.random.split(rng, 4)
    if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
      use_cutmix = jax.random.uniform(key_switch, (draws,)) < self.switch_prob
    else:
      use_cutmix = jnp.full((draws,), self.cutmix_alpha > 0)
    # One Beta call with a per-draw alpha: its sampler is costly to compile.
    alpha = jnp.where(use_cutmix, self.cutmix_alpha, self.mixup_alpha).astype(jnp.float32)
    sampled = jax.random.beta(key_lam, alpha, alpha).astype(jnp.float32)
    box = cutmix_box(key_box, sampled, height, width)
    applied = jax.random.uniform(key_apply, (draws,)) < self.prob
    lam = jnp.where(use_cutmix, box_lambda(box, height, width), sampled)
    lam = jnp.where(applied, lam, 1.0)
    # A box that is not used must not paste anything.
    box = tuple(jnp.where(applied & use_cutmix, b, 0) for b in box)
    broadcast = lambda x: jnp.broadcast_to(x, (batch_size,))
    return MixParams(lam=broadcast(lam), use_cutmix=broadcast(use_cutmix),
                     box=tuple(broadcast(b) for b in box), applied=broadcast(applied),
                     sampled_lam=broadcast(sampled))

  def __call__(self, rng: jax.Array, images: jax.Array, targets: Any) -> MixedBatch:
    """Draws a mixing (`sample`) and applies it (`mix`).

    Args:
      rng: PRNG key (fold the step in for a new draw each step).
      images: [B, H, W, C] uint8 or float (normalised or not: normalisation is
        affine, so it commutes with mixing).
      targets: a [B, classes] float array of one-hot or soft targets, or a
        pytree of them (e.g. task name -> targets of a multi-task model); every
        leaf is mixed with the same lambdas and partners.

    Returns:
      A `MixedBatch`.
    """
    batch_size, height, width = images.shape[:3]
    if self.enabled:
      draw = self.sample(rng, batch_size, height, width)
    else:
      empty = jnp.zeros((batch_size,), jnp.int32)
      draw = MixParams(lam=jnp.ones((batch_size,), jnp.float32),
                       use_cutmix=jnp.zeros((batch_size,), bool), box=(empty,) * 4,
                       applied=jnp.zeros((batch_size,), bool),
                       sampled_lam=jnp.ones((batch_size,), jnp.float32))
    return mix(draw, images, targets, self.label_smoothing)


# Fields of `config.mixup` that are the loop's, not Mixup's: when to stop mixing.
SCHEDULE_FIELDS = ('off_epoch',)


def _mixup_fields(mixup_config) -> dict:
  """`config.mixup` less the loop's SCHEDULE_FIELDS: Mixup's own arguments."""
  return {k: v for k, v in mixup_config.to_dict().items() if k not in SCHEDULE_FIELDS}


def from_config(mixup_config) -> Mixup:
  """`config.mixup`'s Mixup, without label smoothing (the loss smooths, once)."""
  return Mixup(label_smoothing=0.0, **_mixup_fields(mixup_config))


def mixup_at_epoch(mixup: Mixup, mixup_config, epoch: int) -> Mixup | None:
  """The mixing of (0-based) `epoch`: `mixup`, or None from `config.mixup.off_epoch` on."""
  off_epoch = mixup_config.get('off_epoch', 0)
  if not mixup.enabled or (off_epoch and epoch >= off_epoch):
    return None
  return mixup


def config_errors(mixup_config) -> list[str]:
  """What is wrong with `config.mixup` (Mixup's own rules; the loss holds the smoothing)."""
  p = ConfigProblems('mixup', mixup_config)
  for field, why in field_problems(_mixup_fields(mixup_config)):
    p.report(field, why)
  p.check(mixup_config.off_epoch >= 0, 'off_epoch', 'must be >= 0 (0: mix in every epoch)')
  return p


def mix(draw: MixParams, images: jax.Array, targets: Any,
        label_smoothing: float = 0.0) -> MixedBatch:
  """Applies a drawn mixing to a batch; deterministic (`Mixup.__call__` = `sample` + this).

  Args:
    draw: from `Mixup.sample` for this batch size and image size.
    images: see `Mixup.__call__`.
    targets: see `Mixup.__call__`.
    label_smoothing: smoothing of the targets before mixing.

  Returns:
    A `MixedBatch`.
  """
  mixed_targets, dominant_labels = mix_targets(draw, targets, label_smoothing)
  return MixedBatch(images=mix_images(draw, images), targets=mixed_targets,
                    dominant_labels=dominant_labels, lam=draw.lam)


def mix_images(draw: MixParams, images: jax.Array) -> jax.Array:
  """The images half of `mix`: blended or pasted with their partners as drawn.

  A train step mixes the images before the forward pass and the targets
  (whose class count the logits give) after it; both halves read the same draw.
  """
  height, width = images.shape[1:3]
  out_dtype = images.dtype if jnp.issubdtype(images.dtype, jnp.floating) else jnp.float32
  x = images.astype(jnp.float32)
  partner = jnp.flip(x, axis=0)
  weight = draw.lam[:, None, None, None]
  blended = weight * x + (1.0 - weight) * partner
  pasted = jnp.where(_box_mask(draw.box, height, width)[..., None], partner, x)
  mixed = jnp.where(draw.use_cutmix[:, None, None, None], pasted, blended)
  return jnp.where(weight < 1.0, mixed, x).astype(out_dtype)


def mix_targets(draw: MixParams, targets: Any, label_smoothing: float = 0.0) -> tuple[Any, Any]:
  """The targets half of `mix`: (mixed soft targets, dominant labels), same pytree as `targets`."""
  lam = draw.lam
  batch_size = lam.shape[0]
  for leaf in jax.tree.leaves(targets):
    if leaf.ndim != 2 or leaf.shape[0] != batch_size:
      raise ValueError(f'Mixup: targets must be [batch={batch_size}, classes], got {leaf.shape}')

  def mix_leaf(leaf):
    leaf = leaf.astype(jnp.float32)
    if label_smoothing:
      leaf = optax.smooth_labels(leaf, label_smoothing)
    return lam[:, None] * leaf + (1.0 - lam[:, None]) * jnp.flip(leaf, axis=0)

  def dominant(leaf):
    own = jnp.argmax(leaf, axis=-1).astype(jnp.int32)
    return jnp.where(lam >= 0.5, own, jnp.flip(own, axis=0))

  return jax.tree.map(mix_leaf, targets), jax.tree.map(dominant, targets)


def dominant_label_accuracy(logits: jax.Array, dominant_labels: jax.Array) -> jax.Array:
  """[B] float32: 1 where the prediction is the example's dominant label."""
  return (jnp.argmax(logits, axis=-1) == dominant_labels).astype(jnp.float32)
