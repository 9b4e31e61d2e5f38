"""Classifier heads that replace a model's own: an MLP head and one head per task.

Every model in the zoo computes `head(features(x))`, with the head at the
dotted path `model.head_name` ('fc', 'classifier', 'classifier.2'...).
`replace_head` swaps that module, so a new head keeps the path (and parameter
group) of the old one and the backbone stays exactly as converted.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcls.models.interface import get_submodule

_linear_init = nnx.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def _linear(in_features, out_features, *, dtype, rngs):
  return nnx.Linear(in_features, out_features, kernel_init=_linear_init, dtype=dtype, rngs=rngs)


class MLPHead(nnx.Module):
  """Pooled features -> Dense(hidden) -> ReLU -> Dropout -> Dense(num_classes).

  A linear probe underfits when the pretrained features are far from the new
  task; one hidden layer is the usual next step before unfreezing the backbone.
  """

  def __init__(self, in_features: int, hidden: int, num_classes: int, *, dropout_rate: float,
               dtype, rngs: nnx.Rngs):
    self.hidden = _linear(in_features, hidden, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=_dropout_rngs(rngs))
    self.out = _linear(hidden, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, features: jax.Array) -> jax.Array:
    return self.out(self.dropout(nnx.relu(self.hidden(features))))


class MultiTaskHead(nnx.Module):
  """One linear head per task on shared features; calling it gives joint log-probabilities.

  Each class of the data set is a combination of task values (e.g.
  'incorrect_female_old' is mask=incorrect, gender=female, age=old), and
  `class_tasks[c]` holds the per-task indices of class c. `task_logits`
  gives each task's logits for the per-task losses; `__call__` gives
  log p(c) = sum_t log_softmax(logits_t)[class_tasks[c, t]], the joint
  probability of the combination under independent heads, so everything that
  reads class scores (argmax, softmax, TTA averaging, reports) works on the
  combined classes unchanged.
  """

  def __init__(self, in_features: int, tasks: Sequence[tuple[str, int]],
               class_tasks: np.ndarray, *, dtype, rngs: nnx.Rngs):
    self.task_names = tuple(name for name, _ in tasks)
    self.heads = nnx.Dict({name: _linear(in_features, n, dtype=dtype, rngs=rngs)
                           for name, n in tasks})
    self.class_tasks = tuple(tuple(int(i) for i in row) for row in np.asarray(class_tasks))

  def task_logits(self, features: jax.Array) -> dict[str, jax.Array]:
    return {name: self.heads[name](features) for name in self.task_names}

  def __call__(self, features: jax.Array) -> jax.Array:
    index = jnp.asarray(self.class_tasks, jnp.int32)  # [classes, tasks]
    logits = self.task_logits(features)
    return sum(jax.nn.log_softmax(logits[name].astype(jnp.float32))[:, index[:, t]]
               for t, name in enumerate(self.task_names))


def _dropout_rngs(rngs: nnx.Rngs) -> nnx.Rngs:
  # create_model's Rngs has only a 'params' stream: derive the dropout stream from it.
  return rngs if 'dropout' in rngs else nnx.Rngs(dropout=rngs.params())


def replace_head(model: nnx.Module, head: nnx.Module) -> None:
  """Puts `head` where `model.head_name` points (in place)."""
  *parents, last = model.head_name.split('.')
  parent = get_submodule(model, '.'.join(parents)) if parents else model
  if last.isdigit():
    parent.layers[int(last)] = head
  else:
    setattr(parent, last, head)


def head_in_features(model: nnx.Module) -> int:
  """Width of what the head consumes: `model.features(x).shape[-1]`."""
  return int(model.num_features)


def zero_output_layer(head: nnx.Module) -> None:
  """Zeroes the layer(s) producing the logits, so a fresh head starts at chance.

  On a pretrained backbone the features are large and structured, and a
  randomly initialised Linear on them starts far from uniform (a first-epoch
  loss of 2-4 on two classes was measured): its early gradients then tear
  into the backbone. big_vision fine-tunes with `head_zeroinit` for this
  reason. A multi-task head zeroes every task's Linear; an MLP head its last.
  The gradients reach the layers before a zeroed one from the second step on.
  """
  if isinstance(head, MultiTaskHead):
    linears = list(head.heads.values())
  elif isinstance(head, MLPHead):
    linears = [head.out]
  else:
    linears = [m for _, m in nnx.iter_graph(head) if isinstance(m, nnx.Linear)][-1:] or (
        [head] if isinstance(head, nnx.Linear) else [])
  if not linears:
    raise TypeError(f'no Linear layer in the head {type(head).__name__}')
  for linear in linears:
    linear.kernel.set_value(jnp.zeros_like(linear.kernel[...]))
    if linear.bias is not None:
      linear.bias.set_value(jnp.zeros_like(linear.bias[...]))
