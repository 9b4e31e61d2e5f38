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


def train_step(state: TrainState, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, learning_rate_fn: optax.Schedule,
               mean: Sequence[float], std: Sequence[float], dtype: jnp.dtype,
               label_smoothing: float) -> tuple[TrainState, clu_metrics.Collection]:
  images = normalize(batch['image'], mean, std, dtype)
  labels = batch['label']

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state.model_state, copy=True)
    logits = model(images).astype(jnp.float32)
    loss = cross_entropy(logits, labels, label_smoothing).mean()
    return loss, (logits, nnx.split(model, nnx.Param, ...)[2])

  (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            model_state=model_state, opt_state=opt_state)
  step_metrics = TrainMetrics.single_from_model_output(
      loss=loss, logits=logits, labels=labels, learning_rate=learning_rate_fn(state.step))
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
              label_smoothing) -> tuple[Callable, Callable]:
  """Binds the static arguments and jits; the train state's buffers are donated."""
  common = dict(mean=tuple(mean), std=tuple(std), dtype=jnp.dtype(dtype))
  train = jax.jit(
      lambda s, b: train_step(s, b, graphdef=train_graph, tx=tx, learning_rate_fn=learning_rate_fn,
                              label_smoothing=label_smoothing, **common),
      donate_argnums=0)
  evaluate = jax.jit(lambda s, b: eval_step(s, b, graphdef=eval_graph, metrics_cls=metrics_cls,
                                            **common))
  return train, evaluate
