"""A finished (or running) training run, reopened from its workdir.

Evaluation, prediction and explanation tools start from a workdir, not from a
config: `load_run` reads the resolved config the run wrote (`config.json`),
builds the run's parts as training did (`training.setup.build_run`, abstract:
nothing allocated, no pretrained weights read) and restores a checkpoint's
parameters and model state into them (the best by default; its EMA weights
where the checkpoint stands for them); the optimizer state stays on disk.
"""

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from jaxcls.training.checkpointing import Checkpointer, CheckpointRestoreError, checkpoint_weights
from jaxcls.training.setup import build_run
from jaxcls.training.steps import normalize


@dataclasses.dataclass
class Run:
  workdir: Path
  config: ml_collections.ConfigDict  # As resolved by the run (input size, mean/std filled in).
  class_names: tuple[str, ...]
  step: int
  epoch: int
  model: nnx.Module  # In eval mode: BatchNorm uses its running statistics.
  # 'ema': the checkpoint stands for its weights' moving average (train.ema_select), which
  # `model` holds; 'raw': the trained weights.
  weights: str = 'raw'

  def describe(self) -> str:
    """'checkpoint step S, epoch E' (', EMA weights' where the checkpoint stands for them)."""
    return (f'checkpoint step {self.step}, epoch {self.epoch}'
            + (', EMA weights' if self.weights == 'ema' else ''))

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

  def restore(at: int):
    meta = checkpointer.restore_meta(at)
    parts = build_run(config, meta['class_names'], abstract=True)
    return meta, parts, checkpointer.restore_model(
        at, _on_host(parts.params), _on_host(parts.model_state),
        ema=checkpoint_weights(meta) == 'ema')

  try:
    found = _restore_step(checkpointer, step, restore)
  finally:
    checkpointer.close()
  if found is None:
    raise FileNotFoundError(f'{workdir} has no checkpoint yet')
  step, (meta, parts, (params, model_state)) = found
  model = nnx.merge(parts.eval_graph, params, model_state)
  return Run(workdir=workdir, config=config, class_names=parts.class_names, step=int(step),
             epoch=int(meta['epoch']), model=model, weights=checkpoint_weights(meta))


def _restore_step(checkpointer: Checkpointer, step: int | str, restore):
  """(step, restore(step)) for 'best', 'latest' or a number; None without checkpoints.

  A best or latest checkpoint that cannot be restored gives way, with a warning, to the
  newest one that can (nothing is renamed: reopening a run only reads it); a step asked
  for by number is that step or an error.
  """
  if isinstance(step, int):
    try:
      return step, restore(step)
    except FileNotFoundError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # Whatever Orbax raises for it.
      raise CheckpointRestoreError(f'checkpoint step {step} in {checkpointer.directory} cannot '
                                   f'be restored: {type(e).__name__}: {e}') from e
  if step == 'best' and checkpointer.best_step() is not None:
    best = checkpointer.best_step()
    try:
      return best, restore(best)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('the best checkpoint, step %d in %s, cannot be restored (%s: %s); using '
                      'the newest one that restores', best, checkpointer.directory,
                      type(e).__name__, str(e).splitlines()[0][:300] if str(e) else '')
  return checkpointer.newest_restorable(restore, set_aside=False)


def _on_host(abstract_tree):
  """Abstract arrays placed on the first local device: where a reopened run computes."""
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                      abstract_tree)
