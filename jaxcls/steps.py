"""The jitted train and eval steps: pure functions of (state, batch).

Everything the steps need besides the state and the batch (the model's graph,
the optimizer, normalisation constants) is bound with `functools.partial`
before `jax.jit`, so the steps stay pure and the loop around them owns every
side effect.
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics
from flax import nnx

from jaxcls.metrics import TrainMetrics
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
                     opt_state=tx.init(params), rng=jax.random.PRNGKey(seed))
  return train_graph, eval_graph, state


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float],
              dtype: jnp.dtype) -> jax.Array:
  """uint8 images -> (x / 255 - mean) / std in the compute dtype, on the device."""
  x = images.astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy against (optionally smoothed) one-hot labels."""
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def multitask_loss(model: nnx.Module, images: jax.Array, labels: jax.Array,
                   weights: Sequence[float], label_smoothing: float) -> tuple[jax.Array, jax.Array]:
  """(sum_t w_t * mean cross-entropy of task t, joint class scores) for a `MultiTaskHead`."""
  head = get_submodule(model, model.head_name)
  features = model.features(images)
  task_logits = head.task_logits(features)
  table = jnp.asarray(head.class_tasks, jnp.int32)  # [classes, tasks]
  loss = sum(w * cross_entropy(task_logits[name].astype(jnp.float32), table[labels, t],
                               label_smoothing).mean()
             for t, (name, w) in enumerate(zip(head.task_names, weights)))
  return loss, head(features).astype(jnp.float32)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, learning_rate_fn: optax.Schedule,
               mean: Sequence[float], std: Sequence[float], dtype: jnp.dtype,
               label_smoothing: float, trainable: tuple[bool, ...] | None = None,
               task_loss_weights: tuple[float, ...] | None = None,
               metrics_cls: type[clu_metrics.Collection] = TrainMetrics
               ) -> tuple[TrainState, clu_metrics.Collection]:
  """One optimizer step; `trainable` (one bool per params leaf, None: all) picks what trains.

  Only the trainable leaves are differentiated: the frozen ones enter the loss
  as constants, so the backward pass stops at the first trainable layer and
  XLA never computes the frozen prefix's. Frozen leaves get zero gradients
  (their optimizer is `optax.set_to_zero()`, so these are never used).

  With `task_loss_weights`, the model's head is a `MultiTaskHead` and the loss
  is the weighted sum of the per-task cross-entropies.
  """
  images = normalize(batch['image'], mean, std, dtype)
  labels = batch['label']
  leaves, treedef = jax.tree.flatten(state.params)
  trainable = trainable or (True,) * len(leaves)
  if len(trainable) != len(leaves):
    raise ValueError(f'trainable mask has {len(trainable)} entries for {len(leaves)} parameters')

  def loss_fn(trainable_leaves):
    it = iter(trainable_leaves)
    params = jax.tree.unflatten(
        treedef, [next(it) if t else jax.lax.stop_gradient(p) for p, t in zip(leaves, trainable)])
    model = nnx.merge(graphdef, params, state.model_state, copy=True)
    if task_loss_weights is None:
      logits = model(images).astype(jnp.float32)
      loss = cross_entropy(logits, labels, label_smoothing).mean()
    else:
      loss, logits = multitask_loss(model, images, labels, task_loss_weights, label_smoothing)
    return loss, (logits, nnx.split(model, nnx.Param, ...)[2])

  (loss, (logits, model_state)), trainable_grads = jax.value_and_grad(loss_fn, has_aux=True)(
      [p for p, t in zip(leaves, trainable) if t])
  it = iter(trainable_grads)
  grads = jax.tree.unflatten(
      treedef, [next(it) if t else jnp.zeros_like(p) for p, t in zip(leaves, trainable)])
  learning_rate = learning_rate_fn(state.step)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  # The optimizers run at unit learning rate (`optim.create_optimizer`).
  updates = jax.tree.map(lambda u: learning_rate * u, updates)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            model_state=model_state, opt_state=opt_state)
  step_metrics = metrics_cls.single_from_model_output(
      loss=loss, logits=logits, labels=labels, learning_rate=learning_rate)
  return new_state, step_metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef,
              metrics_cls: type[clu_metrics.Collection], mean: Sequence[float],
              std: Sequence[float], dtype: jnp.dtype) -> clu_metrics.Collection:
  """Metrics of one padded batch; `batch['mask']` hides the padding."""
  model = nnx.merge(graphdef, state.params, state.model_state)
  logits = model(normalize(batch['image'], mean, std, dtype)).astype(jnp.float32)
  loss = cross_entropy(logits, batch['label'])
  return metrics_cls.single_from_model_output(
      loss=loss, logits=logits, labels=batch['label'], mask=batch['mask'])


def jit_steps(train_graph, eval_graph, tx, learning_rate_fn, metrics_cls, *, mean, std, dtype,
              label_smoothing, trainable=None, task_loss_weights=None,
              train_metrics_cls=TrainMetrics) -> tuple[Callable, Callable]:
  """Binds the static arguments and jits; the train state's buffers are donated.

  A fine-tuning phase (its frozen groups, `trainable` mask, optimizer and
  train graph) is static here: a schedule re-jits once per phase.
  """
  common = dict(mean=tuple(mean), std=tuple(std), dtype=jnp.dtype(dtype))
  train = jax.jit(
      lambda s, b: train_step(s, b, graphdef=train_graph, tx=tx, learning_rate_fn=learning_rate_fn,
                              label_smoothing=label_smoothing, trainable=trainable,
                              task_loss_weights=task_loss_weights, metrics_cls=train_metrics_cls,
                              **common),
      donate_argnums=0)
  evaluate = jax.jit(lambda s, b: eval_step(s, b, graphdef=eval_graph, metrics_cls=metrics_cls,
                                            **common))
  return train, evaluate
