"""CLU metric collections for training and evaluation.

The steps compute them on the global (sharded) batch inside `jax.jit`, so the
reduction across devices is XLA's; the loop merges them on the device and
fetches them once per logging interval.
"""

import flax
import jax.numpy as jnp
from clu import metrics

from jaxcls.data.label_tasks import Tasks, task_metric_fields


def _top5_correct(logits, labels, **_):
  top5 = jnp.argsort(logits, axis=-1)[:, -5:]
  return (top5 == labels[:, None]).any(axis=-1).astype(jnp.float32)


@flax.struct.dataclass
class FirstNonFiniteStep(metrics.Metric):
  """The first step (1-based) whose loss or gradient norm was not finite; int32 max: none."""
  step: jnp.ndarray

  @classmethod
  def from_model_output(cls, nonfinite_step, **_) -> 'FirstNonFiniteStep':
    return cls(step=jnp.min(nonfinite_step))

  def merge(self, other: 'FirstNonFiniteStep') -> 'FirstNonFiniteStep':
    return type(self)(step=jnp.minimum(self.step, other.step))

  def compute(self) -> jnp.ndarray:
    return self.step


# `nonfinite_step` of a step whose loss and gradient were finite (it updated the state).
NO_STEP = jnp.iinfo(jnp.int32).max


@flax.struct.dataclass
class SkippedSteps(metrics.Metric):
  """How many steps left the state unchanged: loss or gradient not finite (train.nonfinite)."""
  count: jnp.ndarray

  @classmethod
  def from_model_output(cls, nonfinite_step, **_) -> 'SkippedSteps':
    return cls(count=jnp.sum(nonfinite_step != NO_STEP).astype(jnp.int32))

  def merge(self, other: 'SkippedSteps') -> 'SkippedSteps':
    return type(self)(count=self.count + other.count)

  def compute(self) -> jnp.ndarray:
    return self.count


@flax.struct.dataclass
class UpdatingStepsLoss(metrics.Average):
  """The mean loss of the steps that updated the state: a skipped step's infinite or NaN loss
  stays out of the epoch's train loss (and counts in `skipped_steps`)."""

  @classmethod
  def from_model_output(cls, loss, nonfinite_step, **_) -> 'UpdatingStepsLoss':
    updated = nonfinite_step == NO_STEP
    return cls(total=jnp.where(updated, loss, 0.0).sum(), count=updated.sum().astype(jnp.int32))


# Not a metric to plot: the loop pops it from every computed collection.
NONFINITE = 'first_nonfinite_step'
SKIPPED = 'skipped_steps'
_TRAIN_FIELDS = dict(loss=UpdatingStepsLoss, accuracy=metrics.Accuracy,
                     learning_rate=metrics.LastValue.from_output('learning_rate'),
                     **{NONFINITE: FirstNonFiniteStep, SKIPPED: SkippedSteps})
TrainMetrics = metrics.Collection.create(**_TRAIN_FIELDS)

# Under Mixup/CutMix an image has two labels; the train step then passes the
# dominant one (the larger weight's) as `labels`, and the accuracies say so.
DOMINANT_SUFFIX = '_vs_dominant_label'


def train_metrics_class(tasks: Tasks | None = None,
                        mixing: bool = False) -> type[metrics.Collection]:
  """Loss, accuracy, learning rate, and each task's accuracy where there are several.

  With `mixing`, every accuracy is against the dominant label and named so
  ('accuracy_vs_dominant_label', '{task}_accuracy_vs_dominant_label').
  """
  if tasks is None and not mixing:
    return TrainMetrics
  fields = {**_TRAIN_FIELDS, **task_metric_fields(tasks)}
  if mixing:
    fields = {f'{k}{DOMINANT_SUFFIX}' if k.endswith('accuracy') else k: v
              for k, v in fields.items()}
  return metrics.Collection.create(**fields)


def train_accuracy(summary: dict[str, float]) -> float:
  """The train accuracy of a computed collection, whichever label it was measured against."""
  return summary.get('accuracy', summary.get(f'accuracy{DOMINANT_SUFFIX}', float('nan')))


def eval_metrics_class(num_classes: int, tasks: Tasks | None = None) -> type[metrics.Collection]:
  """Loss, accuracy, top-5 accuracy where there are more than 5 classes, per-task accuracy."""
  fields = dict(loss=metrics.Average.from_output('loss'), accuracy=metrics.Accuracy)
  if num_classes > 5:
    fields['top5_accuracy'] = metrics.Average.from_fun(_top5_correct)
  return metrics.Collection.create(**fields, **task_metric_fields(tasks))


# The validation metrics (`eval_metrics_class`'s) that checkpoint.best_metric, plateau.metric
# and early_stopping.metric may name.
BEST_METRICS = ('accuracy', 'loss', 'top5_accuracy')
