"""Orbax checkpoints of the train state: the latest few and the best one.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed mid-write resumes from the last complete checkpoint.
"""

from pathlib import Path

import ml_collections
from absl import logging
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxcls.errors import ConfigProblems, either
from jaxcls.training.metrics import BEST_METRICS
from jaxcls.training.plateau import MODES
from jaxcls.training.steps import TrainState


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (full or read-only disk...); older ones are kept."""

  def __init__(self, step: int | None, directory: Path, cause: Exception):
    super().__init__(
        f'could not write the checkpoint{"" if step is None else f" of step {step}"} to '
        f'{directory}: {type(cause).__name__}: {cause}. Training stopped; the older checkpoints '
        'there are untouched: free space or fix permissions, then rerun to resume.')


class CheckpointRestoreError(RuntimeError):
  """No checkpoint of the workdir (or not the one asked for) can be restored."""


UNREADABLE_SUFFIX = '.unreadable'  # A checkpoint set aside: kept for a look, out of the way.


def _first_line(e: Exception) -> str:
  return f'{type(e).__name__}: {(str(e).strip().splitlines() or [""])[0][:300]}'


class Checkpointer:
  """Saves after every epoch with that epoch's validation metrics; restores latest or best."""

  def __init__(self, directory: str, ckpt_config: ml_collections.ConfigDict):
    metric, mode = ckpt_config.best_metric, ckpt_config.best_mode
    best_fn = lambda metrics: metrics[metric]  # noqa: E731
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=ckpt_config.keep),
        checkpoint_managers.BestN(get_metric_fn=best_fn, reverse=(mode == 'min'), n=1),
    ])
    self.best_metric = metric
    self.directory = Path(directory).resolve()
    self._saving: int | None = None  # The step of the latest save begun.
    self._manager = ocp.CheckpointManager(
        # Orbax wants absolute paths; users give `--workdir runs/x`.
        self.directory, item_names=('state', 'meta'),
        options=ocp.CheckpointManagerOptions(
            best_fn=best_fn, best_mode=mode, preservation_policy=policy, create=True))

  def save(self, state: TrainState, meta: dict, metrics: dict[str, float]) -> None:
    """Saves asynchronously; `meta` is JSON (epoch, data position) kept beside the state."""
    self.check()  # The previous save's failure is the previous step's, not this one's.
    step = int(state.step)
    self._saving = step
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)),
          metrics={k: float(v) for k, v in metrics.items()})
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointSaveError(step, self.directory, e) from e

  def check(self) -> None:
    """Raises CheckpointSaveError if a save running in the background has failed (a full
    disk), naming its step: called between steps, so training stops within a few steps of
    the failure rather than at the next save, an epoch later."""
    try:
      self._manager.check_for_errors()
      if self._saving is not None and not self._manager.is_saving_in_progress():
        self._manager.wait_until_finished()  # Done: returns at once, or raises its failure.
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointSaveError(self._saving, self.directory, e) from e

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def newest_restorable(self, restore, *, set_aside: bool):
    """(step, restore(step)) of the newest checkpoint `restore` can read; None with no
    checkpoint at all.

    A truncated or overwritten checkpoint (Orbax reports bad bytes, a short file, a missing
    entry) costs the run only that checkpoint: the ones before it are tried in turn, and
    each newer one that failed is named in a warning, and with `set_aside` renamed to
    STEP.unreadable, so that the step can be saved again. When none restores, nothing is
    renamed and `CheckpointRestoreError` lists why each failed (a config that no longer
    fits any checkpoint is not a reason to drop them).
    """
    failures = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = restore(step)
      except Exception as e:  # pylint: disable=broad-except  # Whatever Orbax raises for it.
        failures.append((step, _first_line(e)))
        continue
      for bad, why in failures:
        where = f'; moved to {self._set_aside(bad)}' if set_aside else ''
        logging.warning('checkpoint step %d in %s cannot be restored (%s)%s; using step %d, '
                        'the newest one that restores', bad, self.directory, why, where, step)
      return step, restored
    if failures:
      raise CheckpointRestoreError(
          f'no checkpoint in {self.directory} can be restored: '
          + '; '.join(f'step {step}: {why}' for step, why in failures))
    return None

  def _set_aside(self, step: int) -> Path:
    source = self.directory / str(step)
    target = source.with_name(f'{step}{UNREADABLE_SUFFIX}')
    suffix = 1
    while target.exists():
      suffix += 1
      target = source.with_name(f'{step}{UNREADABLE_SUFFIX}{suffix}')
    source.rename(target)
    self._manager.reload()
    return target

  def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict]:
    """Restores `step` into arrays shaped and sharded like `like`."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=_restore_args(like), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def restore_model(self, step: int, params, model_state, *, ema: bool = False):
    """(params, model state) of `step` alone, shaped and placed like the given trees (arrays
    or abstract ones with a sharding): the optimizer state on disk is not read, so testing the
    best checkpoint or reopening a run needs no optimizer. `ema`: the weights' moving
    average (`TrainState.ema`) instead of the trained weights."""
    like = {'params': params, 'model_state': model_state}
    if ema:
      like = {'ema': like}
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=_restore_args(like, partial=True)))
    model = restored.state['ema'] if ema else restored.state
    return model['params'], model['model_state']

  def restore_meta(self, step: int) -> dict:
    """The JSON saved beside the state at `step`, without reading any arrays."""
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def wait(self) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointSaveError(self._saving, self.directory, e) from e

  def close(self) -> None:
    self._manager.close()


def checkpoint_weights(meta: dict) -> str:
  """'ema' when a checkpoint stands for its weights' moving average (a run with
  train.ema_decay whose `train.ema_select` chose it that epoch), else 'raw'."""
  return meta.get('weights', 'raw')


def _restore_args(like, partial: bool = False) -> ocp.args.PyTreeRestore:
  """The state restored into `like`'s structure, shapes and shardings; `partial`: a subtree.

  One handler (PyTree) saves and restores the state: a manager that saved with one kind
  of arguments refuses to restore with another.
  """
  return ocp.args.PyTreeRestore(like, restore_args=ocp.checkpoint_utils.construct_restore_args(
      like), partial_restore=partial)


def config_errors(ckpt_config: ml_collections.ConfigDict) -> list[str]:
  """What is wrong with `config.checkpoint` (`jaxcls.config.validate` lists it)."""
  c, p = ckpt_config, ConfigProblems('checkpoint', ckpt_config)
  p.check(c.keep >= 1, 'keep', 'must be >= 1')
  p.check(c.best_metric in BEST_METRICS, 'best_metric', f'expected one of {BEST_METRICS}')
  p.check(c.best_mode in MODES, 'best_mode', f'expected {either(MODES)}')
  return p
