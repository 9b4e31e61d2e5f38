"""A finished (or running) training run, reopened from its workdir.

Evaluation, prediction and explanation tools start from a workdir, not from a
config: `load_run` reads the resolved config the run wrote (`config.json`),
rebuilds the model and restores a checkpoint into it (the best by default).
"""

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxcls.training import finetune
from jaxcls.training.checkpointing import Checkpointer
from jaxcls.models import model_from_config
from jaxcls.training.optim import create_optimizer
from jaxcls.training.steps import create_train_state, normalize
from jaxcls.data.label_tasks import tasks_from_class_names


@dataclasses.dataclass
class Run:
  workdir: Path
  config: ml_collections.ConfigDict  # As resolved by the run (input size, mean/std filled in).
  class_names: tuple[str, ...]
  step: int
  epoch: int
  model: nnx.Module  # In eval mode: BatchNorm uses its running statistics.

  def logits(self, images: np.ndarray) -> np.ndarray:
    """uint8 [batch, S, S, 3] images (already resized) -> float32 logits, on the device."""
    return np.asarray(_forward(self.model, jnp.asarray(images), tuple(self.config.data.mean),
                               tuple(self.config.data.std), self.config.model.dtype))


@functools.partial(nnx.jit, static_argnums=(2, 3, 4))
def _forward(model, images, mean, std, dtype):
  return model(normalize(images, mean, std, jnp.dtype(dtype))).astype(jnp.float32)


def load_run(workdir: str | Path, step: int | str = 'best') -> Run:
  """Reopens `workdir` at checkpoint `step`: 'best' (by the run's validation metric),
  'latest', or a step number."""
  workdir = Path(workdir)
  config_file = workdir / 'config.json'
  if not config_file.is_file():
    raise FileNotFoundError(f'{workdir} is not a jaxcls workdir: no config.json')
  config = ml_collections.ConfigDict(json.loads(config_file.read_text()))
  checkpointer = Checkpointer(str(workdir / 'checkpoints'), config.checkpoint)
  try:
    if step == 'best':
      step = checkpointer.best_step()
    elif step == 'latest':
      step = checkpointer.latest_step()
    if step is None:
      raise FileNotFoundError(f'{workdir} has no checkpoint yet')
    meta = checkpointer.restore_meta(step)
    tasks = tasks_from_class_names(meta['class_names'], config.tasks.names,
                                   config.tasks.separator)
    model = model_from_config(config.model, meta['class_names'],
                              tasks if config.tasks.mode == 'heads' else None, pretrained=False)
    # The optimizer of the saved fine-tuning phase gives the saved state's shape.
    labels = finetune.param_labels(model, nnx.state(model, nnx.Param))
    tx = create_optimizer(config.optimizer, labels, meta['trainable_groups'])
    _, eval_graph, like = create_train_state(model, tx, config.seed)
    state, _ = checkpointer.restore(int(step), like)
  finally:
    checkpointer.close()
  model = nnx.merge(eval_graph, jax.device_get(state.params), jax.device_get(state.model_state))
  return Run(workdir=workdir, config=config, class_names=tuple(meta['class_names']),
             step=int(step), epoch=int(meta['epoch']), model=model)
