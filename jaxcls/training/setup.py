"""A run's parts from its config: the model split for the steps, its groups, its labels.

Training starts from these parts (`loop.fit`), and reopening a finished run
(`jaxcls.evaluation.reopen`) builds the same parts, without pretrained
weights and without allocating them, and restores the checkpoint's parameters
and model state into them: the two can never disagree about what a run's
model is.
"""

import dataclasses
from collections.abc import Sequence

import ml_collections
from flax import nnx

from jaxcls.data.label_tasks import Tasks, tasks_from_class_names
from jaxcls.errors import ConfigError
from jaxcls.models import model_from_config
from jaxcls.pretrained.checkpoint_files import CheckpointFileError
from jaxcls.pretrained.convert import CheckpointMismatchError
from jaxcls.pretrained.fetch import PretrainedSourceError
from jaxcls.pretrained.store import PretrainedInfo
from jaxcls.training import finetune
from jaxcls.training.steps import split_model


@dataclasses.dataclass(frozen=True)
class RunParts:
  """What a run's config and classes make: everything but the training state."""
  class_names: tuple[str, ...]
  tasks: Tasks | None  # The label factorisation (config.tasks), None without one.
  heads_per_task: bool  # tasks.mode == 'heads': a MultiTaskHead, one loss per task.
  train_graph: nnx.GraphDef
  eval_graph: nnx.GraphDef
  params: nnx.State  # Arrays, or jax.ShapeDtypeStruct for an abstract build.
  model_state: nnx.State  # BatchNorm statistics and the like.
  group_patterns: finetune.GroupPatterns
  tied_groups: dict  # Groups that train with another (`Classifier.tied_groups`).
  pretrained: PretrainedInfo | None  # The weights loaded; None from scratch or abstract.

  @property
  def groups(self) -> tuple[str, ...]:
    return tuple(name for name, _ in self.group_patterns)

  def labels(self) -> nnx.State:
    """Each parameter's group name, a tree like `params` (the optimizer's partition)."""
    return finetune.param_labels(self.group_patterns, self.params)


def build_run(config: ml_collections.ConfigDict, class_names: Sequence[str], *,
              pretrained: bool = True, abstract: bool = False) -> RunParts:
  """The parts of a run of `config` (resolved) on `class_names`.

  `pretrained`: load `config.model.pretrained` (off when a checkpoint fills the
  parameters anyway). `abstract`: shapes and dtypes only, nothing allocated
  (implies no pretrained weights), for a restore to fill.
  """
  class_names = tuple(class_names)
  tasks = tasks_from_class_names(class_names, config.tasks.names, config.tasks.separator)
  heads_per_task = tasks is not None and config.tasks.mode == 'heads'
  build = lambda: model_from_config(  # noqa: E731
      config.model, class_names, tasks if heads_per_task else None, seed=config.seed,
      pretrained=pretrained and not abstract, return_info=True,
      image_size=config.data.image_size)
  try:
    model, info = nnx.eval_shape(build) if abstract else build()
  except (CheckpointFileError, CheckpointMismatchError, PretrainedSourceError) as e:
    # A garbage file, weights of another architecture, a download that failed: the user's.
    raise ConfigError(f'config.model.pretrained={config.model.pretrained!r}: {e}') from e
  finetune.group_names(model)  # Raises unless the groups end with the head.
  train_graph, eval_graph, params, model_state = split_model(model)
  return RunParts(class_names=class_names, tasks=tasks, heads_per_task=heads_per_task,
                  train_graph=train_graph, eval_graph=eval_graph, params=params,
                  model_state=model_state,
                  group_patterns=tuple((n, p) for n, p in model.group_patterns),
                  tied_groups=dict(model.tied_groups),
                  pretrained=None if abstract else info)
