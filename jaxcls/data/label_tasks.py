"""Several labels per image, encoded in the class names ('incorrect_female_old').

A face data set labelled by mask (3 values), gender (2) and age (3) is one
folder per combination: 18 classes. `Tasks` decodes each combined class into
its per-task values, so a model can be trained either with one head over the
18 classes or with one head per task, and reported per task in both cases.
"""

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from clu import metrics

from jaxcls.errors import ConfigError, ConfigProblems, either


@dataclasses.dataclass(frozen=True)
class Tasks:
  names: tuple[str, ...]
  # values[t]: the sorted class values of task t.
  values: tuple[tuple[str, ...], ...]
  # class_tasks[c, t]: index into values[t] of combined class c.
  class_tasks: np.ndarray

  @property
  def sizes(self) -> tuple[int, ...]:
    return tuple(len(v) for v in self.values)

  def marginal(self, probabilities: np.ndarray, task: int) -> np.ndarray:
    """p(task value) = sum of p(class) over the classes with that value: [N, values]."""
    one_hot = np.eye(len(self.values[task]), dtype=np.float64)[self.class_tasks[:, task]]
    return np.asarray(probabilities, np.float64) @ one_hot

  def decode(self, classes: np.ndarray) -> dict[str, np.ndarray]:
    """Combined class indices -> {task: per-task class indices}."""
    classes = np.asarray(classes)
    return {name: self.class_tasks[classes, t] for t, name in enumerate(self.names)}


def tasks_from_class_names(class_names: Sequence[str], names: Sequence[str],
                           separator: str) -> Tasks | None:
  """Splits every class name into one value per task; None for a single task."""
  if not names:
    return None
  parts = []
  for class_name in class_names:
    split = class_name.split(separator)
    if len(split) != len(names):
      raise ConfigError(
          f'config.tasks.names={tuple(names)}: class {class_name!r} does not split into '
          f'{len(names)} values at {separator!r} (config.tasks.separator)')
    parts.append(split)
  values = tuple(tuple(sorted({p[t] for p in parts})) for t in range(len(names)))
  class_tasks = np.array([[values[t].index(p[t]) for t in range(len(names))] for p in parts],
                         np.int32).reshape(len(parts), len(names))
  return Tasks(names=tuple(names), values=values, class_tasks=class_tasks)


# config.tasks.mode: one head over the combined classes, or one head per task.
TASK_MODES = ('combined', 'heads')


def config_errors(tasks_config) -> list[str]:
  """What is wrong with `config.tasks` (`tasks_from_class_names` checks it against the data)."""
  c, p = tasks_config, ConfigProblems('tasks', tasks_config)
  p.check(c.mode in TASK_MODES, 'mode', f'expected {either(TASK_MODES)}')
  p.check(len(c.names) != 1, 'names', 'name two or more tasks, or none')
  p.check(len(set(c.names)) == len(c.names), 'names', 'names must be distinct')
  p.check(not c.loss_weights or len(c.loss_weights) == len(c.names), 'loss_weights',
          f'expected one weight per task in tasks.names={tuple(c.names)}')
  p.check(all(w >= 0 for w in c.loss_weights), 'loss_weights', 'must be >= 0')
  p.check(bool(c.separator), 'separator', 'must not be empty')
  return p


def task_metric_fields(tasks: Tasks | None) -> dict[str, type[metrics.Metric]]:
  """'{task}_accuracy' metrics from the combined class scores, for any head."""
  if tasks is None:
    return {}
  fields = {}
  for t, name in enumerate(tasks.names):
    table = tuple(int(i) for i in tasks.class_tasks[:, t])

    def correct(logits, labels, table=table, **_):
      index = jnp.asarray(table, jnp.int32)
      return (index[jnp.argmax(logits, axis=-1)] == index[labels]).astype(jnp.float32)

    fields[f'{name}_accuracy'] = metrics.Average.from_fun(correct)
  return fields
