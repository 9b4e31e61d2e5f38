"""The jitted train and eval steps: pure functions of (state, batch).

Everything the steps need besides the state and the batch (the model's graph,
the optimizer, the loss, augmentation and mixing, normalisation constants) is
bound before `jax.jit`, so the steps stay pure and the loop around them owns
every side effect.
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from clu import metrics as clu_metrics
from flax import nnx

from jaxcls.training import losses
from jaxcls.data import device_augment
from jaxcls.training.losses import LossFn
from jaxcls.training.metrics import TrainMetrics, train_metrics_class
from jaxcls.data.mixing import MixParams, Mixup, mix_images, mix_targets
from jaxcls.models.heads import get_submodule


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data position (derived from `step`)."""
  step: jax.Array
  params: Any
  # Non-parameter variables: BatchNorm running statistics and the like.
  model_state: Any
  opt_state: Any
  # Raw uint32 key for on-device randomness; folded with the step each step.
  rng: jax.Array
  # float32 scalar multiplying the schedule's learning rate: ReduceLROnPlateau's
  # scale, set by the loop after validation (1: no reduction).
  lr_scale: jax.Array


# `fold_in` constants of the step key: one stream per use, so switching one on
# or off does not change what the other draws.
AUGMENT_STREAM = 0
MIX_STREAM = 1


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation,
                       seed: int) -> tuple[nnx.GraphDef, nnx.GraphDef, TrainState]:
  """Splits a model into (train graph, eval graph, state).

  Two graph definitions, one with BatchNorm in training mode and one using the
  running averages, let the steps merge the graph they need without mutating
  a module inside the traced function.
  """
  model.train()
  train_graph, params, model_state = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_graph = nnx.split(model, nnx.Param, ...)[0]
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                     opt_state=tx.init(params), rng=jax.random.PRNGKey(seed),
                     lr_scale=jnp.ones((), jnp.float32))
  return train_graph, eval_graph, state


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float],
              dtype: jnp.dtype) -> jax.Array:
  """uint8 (or float in [0, 255]) images -> (x / 255 - mean) / std in the compute dtype."""
  x = images.astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)


def augment_and_mix(rng: jax.Array, step: jax.Array, images: jax.Array, *,
                    augment_config=None, mixup: Mixup | None = None
                    ) -> tuple[jax.Array, MixParams | None]:
  """The train images of `step` as the model sees them, before normalisation.

  On-device augmentation (`device_augment.augment_batch`), then Mixup/CutMix
  images, each from its own stream of the step's key. Returns the images
  (uint8 without mixing, float32 in [0, 255] with it) and the mixing drawn,
  which the targets follow (None: no mixing).
  """
  step_key = jax.random.fold_in(rng, step)
  if augment_config is not None:
    images = device_augment.augment_batch(jax.random.fold_in(step_key, AUGMENT_STREAM), images, augment_config)
  if mixup is None:
    return images, None
  draw = mixup.sample(jax.random.fold_in(step_key, MIX_STREAM), *images.shape[:3])
  return mix_images(draw, images), draw


def task_targets(head: nnx.Module, labels: jax.Array) -> dict[str, jax.Array]:
  """{task: one-hot [B, task classes]} of combined-class `labels` for a `MultiTaskHead`."""
  table = jnp.asarray(head.class_tasks, jnp.int32)  # [classes, tasks]
  return {name: jax.nn.one_hot(table[labels, t], head.heads[name].out_features)
          for t, name in enumerate(head.task_names)}


def multitask_loss(model: nnx.Module, images: jax.Array, targets: dict[str, jax.Array],
                   weights: Sequence[float], loss_fn: LossFn) -> tuple[jax.Array, jax.Array]:
  """(sum_t w_t * mean loss of task t, joint class scores) for a `MultiTaskHead`.

  `targets` holds each task's soft targets (`task_targets`, mixed or not).
  """
  head = get_submodule(model, model.head_name)
  features = model.features(images)
  task_logits = head.task_logits(features)
  loss = sum(w * loss_fn(task_logits[name].astype(jnp.float32), targets[name]).mean()
             for name, w in zip(head.task_names, weights))
  return loss, head(features).astype(jnp.float32)


# `nonfinite_step` of a step whose loss and gradient are finite.
NO_STEP = jnp.iinfo(jnp.int32).max


def train_step(state: TrainState, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, learning_rate_fn: optax.Schedule,
               mean: Sequence[float], std: Sequence[float], dtype: jnp.dtype, loss_fn: LossFn,
               augment_config=None, mixup: Mixup | None = None,
               trainable: tuple[bool, ...] | None = None,
               task_loss_weights: tuple[float, ...] | None = None,
               metrics_cls: type[clu_metrics.Collection] = TrainMetrics
               ) -> tuple[TrainState, clu_metrics.Collection]:
  """One optimizer step; `trainable` (one bool per params leaf, None: all) picks what trains.

  The images are augmented and mixed (`augment_and_mix`; None: off), the
  one-hot targets mixed alike, and `loss_fn(logits, soft targets)` averaged
  over the batch. Under mixing, the metrics' `labels` are the dominant labels
  (`metrics.train_metrics_class(mixing=True)` names the accuracies so).

  Only the trainable leaves are differentiated: the frozen ones enter the loss
  as constants, so the backward pass stops at the first trainable layer and
  XLA never computes the frozen prefix's. Frozen leaves get zero gradients
  (their optimizer is `optax.set_to_zero()`, so these are never used).

  With `task_loss_weights`, the model's head is a `MultiTaskHead` and the loss
  is the weighted sum of the per-task losses, each task's targets mixed with
  the same lambdas.
  """
  images, draw = augment_and_mix(state.rng, state.step, batch['image'],
                                 augment_config=augment_config, mixup=mixup)
  images = normalize(images, mean, std, dtype)
  labels = batch['label']
  leaves, treedef = jax.tree.flatten(state.params)
  trainable = trainable or (True,) * len(leaves)
  if len(trainable) != len(leaves):
    raise ValueError(f'trainable mask has {len(trainable)} entries for {len(leaves)} parameters')

  def loss_fn_of(trainable_leaves):
    it = iter(trainable_leaves)
    params = jax.tree.unflatten(
        treedef, [next(it) if t else jax.lax.stop_gradient(p) for p, t in zip(leaves, trainable)])
    model = nnx.merge(graphdef, params, state.model_state, copy=True)
    if task_loss_weights is None:
      logits = model(images).astype(jnp.float32)
      targets = {'class': jax.nn.one_hot(labels, logits.shape[-1])}
    else:
      head = get_submodule(model, model.head_name)
      targets = {'class': jax.nn.one_hot(labels, len(head.class_tasks)),
                 'tasks': task_targets(head, labels)}
    dominant = {'class': labels}
    if draw is not None:
      targets, dominant = mix_targets(draw, targets)
    if task_loss_weights is None:
      loss = loss_fn(logits, targets['class']).mean()
    else:
      loss, logits = multitask_loss(model, images, targets['tasks'], task_loss_weights, loss_fn)
    return loss, (logits, dominant['class'], nnx.split(model, nnx.Param, ...)[2])

  (loss, (logits, metric_labels, model_state)), trainable_grads = jax.value_and_grad(
      loss_fn_of, has_aux=True)([p for p, t in zip(leaves, trainable) if t])
  it = iter(trainable_grads)
  grads = jax.tree.unflatten(
      treedef, [next(it) if t else jnp.zeros_like(p) for p, t in zip(leaves, trainable)])
  learning_rate = learning_rate_fn(state.step) * state.lr_scale
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  # The optimizers run at unit learning rate (`optim.create_optimizer`).
  updates = jax.tree.map(lambda u: learning_rate * u, updates)
  updated = state.replace(params=optax.apply_updates(state.params, updates),
                          model_state=model_state, opt_state=opt_state)
  # A non-finite loss or gradient never reaches the state: the step leaves it
  # as it was (the loop stops or skips on `nonfinite_step`).
  finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(trainable_grads))
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
  new_state = new_state.replace(step=state.step + 1)
  step_metrics = metrics_cls.single_from_model_output(
      loss=loss, logits=logits, labels=metric_labels, learning_rate=learning_rate,
      nonfinite_step=jnp.where(finite, NO_STEP, state.step + 1))
  return new_state, step_metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef,
              metrics_cls: type[clu_metrics.Collection], mean: Sequence[float],
              std: Sequence[float], dtype: jnp.dtype) -> clu_metrics.Collection:
  """Metrics of one padded batch; `batch['mask']` hides the padding.

  The loss is the plain cross-entropy whatever the training loss, so
  validation losses compare across losses, smoothing and class weights.
  """
  model = nnx.merge(graphdef, state.params, state.model_state)
  logits = model(normalize(batch['image'], mean, std, dtype)).astype(jnp.float32)
  loss = losses.cross_entropy(logits, jax.nn.one_hot(batch['label'], logits.shape[-1]))
  return metrics_cls.single_from_model_output(
      loss=loss, logits=logits, labels=batch['label'], mask=batch['mask'])


def _static_augment(augment_config):
  """An immutable view of `config.data.augment` for tracing; None where every op is off."""
  if augment_config is None or not device_augment.enabled(augment_config):
    return None
  return ml_collections.FrozenConfigDict(augment_config)


def _static_mixup(mixup: Mixup | None) -> Mixup | None:
  if mixup is not None and mixup.label_smoothing:
    raise ValueError(f'Mixup(label_smoothing={mixup.label_smoothing}): label smoothing belongs '
                     'to the loss (losses.make_loss_fn), build Mixup with label_smoothing=0')
  return mixup if mixup is not None and mixup.enabled else None


def jit_steps(train_graph, eval_graph, tx, learning_rate_fn, metrics_cls, *, mean, std, dtype,
              label_smoothing=0.0, loss_fn=None, augment_config=None, mixup=None,
              trainable=None, task_loss_weights=None,
              train_metrics_cls=None) -> tuple[Callable, Callable]:
  """Binds the static arguments and jits; the train state's buffers are donated.

  A fine-tuning phase (its frozen groups, `trainable` mask, optimizer and
  train graph) is static here: a schedule re-jits once per phase. So are
  `augment_config` (`config.data.augment`, read when tracing) and `mixup`.
  `loss_fn` (`losses.make_loss_fn`) holds any label smoothing; without it,
  the loss is cross-entropy smoothed by `label_smoothing`.
  `train_metrics_cls` None: `metrics.train_metrics_class(mixing=...)`.
  """
  if loss_fn is None:
    loss_fn = losses.make_loss_fn('cross_entropy', label_smoothing=label_smoothing)
  elif label_smoothing:
    raise ValueError('label_smoothing: give it to make_loss_fn, which built loss_fn')
  mixup = _static_mixup(mixup)
  if train_metrics_cls is None:
    train_metrics_cls = train_metrics_class(mixing=mixup is not None)
  common = dict(mean=tuple(mean), std=tuple(std), dtype=jnp.dtype(dtype))
  train = jax.jit(
      lambda s, b: train_step(s, b, graphdef=train_graph, tx=tx, learning_rate_fn=learning_rate_fn,
                              loss_fn=loss_fn, augment_config=_static_augment(augment_config),
                              mixup=mixup, trainable=trainable,
                              task_loss_weights=task_loss_weights, metrics_cls=train_metrics_cls,
                              **common),
      donate_argnums=0)
  evaluate = jax.jit(lambda s, b: eval_step(s, b, graphdef=eval_graph, metrics_cls=metrics_cls,
                                            **common))
  return train, evaluate


def jit_preview(*, augment_config=None, mixup: Mixup | None = None) -> Callable:
  """Jitted (rng, step, uint8 images) -> uint8 images: what the train step at `step` feeds
  the model before normalisation (same augmentation, mixing and keys), for looking at."""
  augment_config, mixup = _static_augment(augment_config), _static_mixup(mixup)

  def preview(rng, step, images):
    seen, _ = augment_and_mix(rng, step, images, augment_config=augment_config, mixup=mixup)
    return jnp.clip(jnp.round(seen.astype(jnp.float32)), 0, 255).astype(jnp.uint8)

  return jax.jit(preview)
