"""Optimizer and learning-rate schedule from the config, as one optax transformation.

`create_optimizer` chains the per-group optimizers (at unit learning rate
times each group's multiplier, `optax.set_to_zero()` for frozen groups) with
one scaling by the schedule's learning rate times ReduceLROnPlateau's scale,
both hyperparameters injected into the optimizer state
(`optax.inject_hyperparams`): the state knows the learning rate it applied,
and the loop lowers the plateau scale with `set_plateau_scale`. Every
optimizer here applies its learning rate last, so scaling its unit-rate
update is the same update, and the groups' states stay independent of the
schedule: a group unfrozen at epoch 6 starts fresh moments
(`carry_over`) without restarting the schedule.

Gradient clipping (`clip_grad_norm`, `adaptive_clip`) acts on the raw
gradients of the trainable groups, before the groups' optimizers and their
learning-rate multipliers, as timm clips before `optimizer.step()`. Both
clippers are stateless, so they run inside the groups' transformation and the
optimizer state has the same structure with clipping on or off: a run's
checkpoints restore whichever way clipping is set.
"""

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxcls.errors import ConfigProblems, either


def learning_rate_schedule(opt_config: ml_collections.ConfigDict, steps_per_epoch: int,
                           num_epochs: int) -> optax.Schedule:
  """Linear warm-up from zero, then 'cosine' (to zero), 'step' or 'constant'."""
  peak = opt_config.learning_rate
  total_steps = num_epochs * steps_per_epoch
  warmup_steps = int(round(opt_config.warmup_epochs * steps_per_epoch))
  if opt_config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=0.0)
  if opt_config.schedule == 'step':
    after_warmup = optax.piecewise_constant_schedule(
        peak, {int(e * steps_per_epoch) - warmup_steps: opt_config.decay_factor
               for e in opt_config.decay_epochs})
  elif opt_config.schedule == 'constant':
    after_warmup = optax.constant_schedule(peak)
  else:
    raise ValueError(f'config.optimizer.schedule={opt_config.schedule!r}: '
                     f'expected {either(SCHEDULES)}')
  if warmup_steps == 0:
    return after_warmup
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  return optax.join_schedules([warmup, after_warmup], [warmup_steps])


def decay_mask(params):
  """True for weights that get weight decay: kernels, not biases or norm scales.

  Decaying BatchNorm scales and biases only fights the normalisation (Goyal et
  al. 2017); rank >= 2 picks exactly the convolution and dense kernels.
  """
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _group_optimizer(opt_config: ml_collections.ConfigDict,
                     learning_rate: float) -> optax.GradientTransformation:
  """One group's optimizer at `learning_rate` (its multiplier); weight decay on kernels only.

  SGD and RMSprop add the decay to the gradient (L2, as PyTorch's); AdamW, LAMB
  and Lion decay the weights decoupled from the moments (LAMB inside its trust
  ratio). Each applies its learning rate last, or before a linear momentum
  trace (RMSprop), so the schedule scaling the unit-rate update after it is the
  same update.
  """
  o = opt_config
  if o.name == 'sgd':
    return optax.chain(
        optax.add_decayed_weights(o.weight_decay, mask=decay_mask),
        optax.sgd(learning_rate, momentum=o.momentum or None, nesterov=o.nesterov))
  if o.name == 'adamw':
    return optax.adamw(learning_rate, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                       mask=decay_mask)
  if o.name == 'lamb':
    return optax.lamb(learning_rate, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                      mask=decay_mask)
  if o.name == 'lion':
    return optax.lion(learning_rate, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                      mask=decay_mask)
  if o.name == 'rmsprop':
    # PyTorch's RMSprop (timm's 'rmsprop'): eps outside the square root, plain momentum.
    return optax.chain(
        optax.add_decayed_weights(o.weight_decay, mask=decay_mask),
        optax.rmsprop(learning_rate, decay=o.rmsprop_decay, eps=1e-8, eps_in_sqrt=False,
                      momentum=o.momentum or None))
  raise ValueError(f'config.optimizer.name={opt_config.name!r}: expected {either(OPTIMIZERS)}')


def create_optimizer(opt_config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule,
                     labels=None, trainable: Sequence[str] | None = None,
                     lr_multipliers: Mapping[str, float] | None = None
                     ) -> optax.GradientTransformation:
  """The configured optimizer per parameter group (SGD, AdamW, LAMB, Lion or RMSprop), after
  any gradient clipping, scaled by the schedule and the plateau scale.

  Args:
    opt_config: `config.optimizer`.
    learning_rate_fn: the schedule (`learning_rate_schedule`), of the update count.
    labels: a tree like the params holding each parameter's group name
      (`finetune.param_labels`); None: one group, 'all'.
    trainable: the groups that train; the others get `optax.set_to_zero()`:
      no update, no weight decay, no optimizer state. None: all.
    lr_multipliers: group -> multiplier of the learning rate (default 1).
  """
  lr_multipliers = lr_multipliers or {}
  if labels is None:
    groups = _group_optimizer(opt_config, lr_multipliers.get('all', 1.0))
  else:
    names = sorted(set(jax.tree.leaves(labels)))
    trainable = names if trainable is None else trainable
    groups = optax.multi_transform(
        {g: (_group_optimizer(opt_config, lr_multipliers.get(g, 1.0)) if g in trainable
             else optax.set_to_zero()) for g in names}, labels)
  clip = gradient_clipping(opt_config)
  if clip is not None:
    if labels is not None:  # Frozen groups stay out of the global norm.
      clip = optax.masked(clip, jax.tree.map(lambda group: group in trainable, labels))
    groups = _clipped(clip, groups)
  return optax.chain(groups, optax.inject_hyperparams(_scale_by_learning_rate)(
      learning_rate=learning_rate_fn, plateau_scale=1.0))


def gradient_clipping(opt_config: ml_collections.ConfigDict
                      ) -> optax.GradientTransformation | None:
  """`clip_grad_norm` (global norm) then `adaptive_clip` (unit-wise, Brock et al. 2021),
  each where set (0: off); None when both are off."""
  clippers = []
  if opt_config.clip_grad_norm:
    clippers.append(optax.clip_by_global_norm(opt_config.clip_grad_norm))
  if opt_config.adaptive_clip:
    clippers.append(optax.adaptive_grad_clip(opt_config.adaptive_clip))
  return optax.chain(*clippers) if clippers else None


def _clipped(clip: optax.GradientTransformation,
             inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner` fed the gradients `clip` (stateless) returns; the state is `inner`'s alone."""

  def update(updates, state, params=None):
    updates, _ = clip.update(updates, clip.init(params), params)
    return inner.update(updates, state, params)

  return optax.GradientTransformation(inner.init, update)


def _scale_by_learning_rate(learning_rate, plateau_scale) -> optax.GradientTransformation:
  return optax.scale(learning_rate * plateau_scale)


def _hyperparams(opt_state) -> dict:
  return opt_state[1].hyperparams


def learning_rate(opt_state) -> jax.Array:
  """The learning rate the last update applied: the schedule's times the plateau scale."""
  hyperparams = _hyperparams(opt_state)
  return hyperparams['learning_rate'] * hyperparams['plateau_scale']


def plateau_scale(opt_state) -> float:
  return float(_hyperparams(opt_state)['plateau_scale'])


def set_plateau_scale(opt_state, scale: float):
  """`opt_state` with ReduceLROnPlateau's scale set to `scale` (placed like the old one)."""
  old = _hyperparams(opt_state)['plateau_scale']
  new = jnp.asarray(scale, old.dtype)
  if isinstance(old, jax.Array):
    new = jax.device_put(new, old.sharding)
  hyperparams = {**_hyperparams(opt_state), 'plateau_scale': new}
  return (opt_state[0], opt_state[1]._replace(hyperparams=hyperparams))


def carry_over(new_state, old_state, keep: Sequence[str]):
  """The optimizer state after an unfreeze: `new_state` (fresh from `tx.init`) with the
  moments of the groups in `keep` (trained before and after), the update count and the
  plateau scale taken from `old_state`; newly unfrozen groups keep their fresh moments."""
  inner = dict(new_state[0].inner_states)
  for name in keep:
    inner[name] = old_state[0].inner_states[name]
  return (new_state[0]._replace(inner_states=inner), old_state[1])


OPTIMIZERS = ('sgd', 'adamw', 'lamb', 'lion', 'rmsprop')
SCHEDULES = ('cosine', 'step', 'constant')


def config_errors(opt_config: ml_collections.ConfigDict) -> list[str]:
  """What is wrong with `config.optimizer` (`jaxcls.config.validate` lists it)."""
  o, p = opt_config, ConfigProblems('optimizer', opt_config)
  p.check(o.name in OPTIMIZERS, 'name', f'expected {either(OPTIMIZERS)}')
  p.check(o.learning_rate > 0, 'learning_rate', 'must be positive')
  p.check(0 <= o.momentum < 1, 'momentum', 'must be in [0, 1)')
  p.check(o.weight_decay >= 0, 'weight_decay', 'must be >= 0')
  p.check(o.schedule in SCHEDULES, 'schedule', f'expected {either(SCHEDULES)}')
  p.check(o.warmup_epochs >= 0, 'warmup_epochs', 'must be >= 0')
  decay = list(o.decay_epochs)
  p.check(decay == sorted(decay) and all(e > o.warmup_epochs for e in decay), 'decay_epochs',
          'must be increasing and after the warm-up')
  p.check(o.decay_factor > 0, 'decay_factor', 'must be positive')
  p.check(0 <= o.b1 < 1, 'b1', 'must be in [0, 1)')
  p.check(0 <= o.b2 < 1, 'b2', 'must be in [0, 1)')
  p.check(0 < o.rmsprop_decay < 1, 'rmsprop_decay', 'must be in (0, 1)')
  p.check(o.clip_grad_norm >= 0, 'clip_grad_norm', 'must be >= 0 (0: off)')
  p.check(o.adaptive_clip >= 0, 'adaptive_clip', 'must be >= 0 (0: off)')
  return p
