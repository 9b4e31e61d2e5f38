"""CLU metric collections for training and evaluation.

The steps compute them on the global (sharded) batch inside `jax.jit`, so the
reduction across devices is XLA's; the loop merges them on the device and
fetches them once per logging interval.
"""

import jax.numpy as jnp
from clu import metrics

from jaxcls.tasks import Tasks, task_metric_fields


def _top5_correct(logits, labels, **_):
  top5 = jnp.argsort(logits, axis=-1)[:, -5:]
  return (top5 == labels[:, None]).any(axis=-1).astype(jnp.float32)


_TRAIN_FIELDS = dict(loss=metrics.Average.from_output('loss'), accuracy=metrics.Accuracy,
                     learning_rate=metrics.LastValue.from_output('learning_rate'))
TrainMetrics = metrics.Collection.create(**_TRAIN_FIELDS)


def train_metrics_class(tasks: Tasks | None = None) -> type[metrics.Collection]:
  """Loss, accuracy, learning rate, and each task's accuracy where there are several."""
  if tasks is None:
    return TrainMetrics
  return metrics.Collection.create(**_TRAIN_FIELDS, **task_metric_fields(tasks))


def eval_metrics_class(num_classes: int, tasks: Tasks | None = None) -> type[metrics.Collection]:
  """Loss, accuracy, top-5 accuracy where there are more than 5 classes, per-task accuracy."""
  fields = dict(loss=metrics.Average.from_output('loss'), accuracy=metrics.Accuracy)
  if num_classes > 5:
    fields['top5_accuracy'] = metrics.Average.from_fun(_top5_correct)
  return metrics.Collection.create(**fields, **task_metric_fields(tasks))
