"""The training loop: epochs of jitted steps, validation, checkpoints, then the test.

`fit` reads as the outline of a run; each stage is a function below it. The
loop owns every side effect (logging, checkpoints, progress); the steps it
calls are pure (`jaxcls.training.steps`). A rerun with the same workdir
resumes from the latest checkpoint: the train state holds the model,
optimizer (its learning-rate schedule and plateau scale included), step and
RNG, and the data position is derived from the step, so the resumed run sees
the same batches an uninterrupted one would. After each validation the loop
updates ReduceLROnPlateau and early stopping, both kept in the checkpoint's
meta.
"""

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import parameter_overview

from jaxcls import data
from jaxcls.data import mixing
from jaxcls.data.mixing import Mixup
from jaxcls.data.on_device import DeviceTrainSet
from jaxcls.errors import ConfigError, ConfigProblems, either
from jaxcls.training import feature_cache, finetune, losses, optim, parallel, results, tracking
from jaxcls.training.checkpointing import Checkpointer, CheckpointSaveError, checkpoint_weights
from jaxcls.training.metrics import (NONFINITE, SKIPPED, eval_metrics_class, train_accuracy,
                                     train_metrics_class)
from jaxcls.training.plateau import EarlyStopping, EarlyStoppingState, PlateauState, ReduceLROnPlateau
from jaxcls.training.preemption import Preempted, PreemptionGuard
from jaxcls.training.preview import FIRST_BATCH_PNG, write_first_batch
from jaxcls.training.profiling import StepTrace
from jaxcls.training.progress import ProgressReporter
from jaxcls.training.setup import RunParts, build_run
from jaxcls.training.steps import (NO_STEP, StepSpec, ema_view, jit_preview, jit_steps,
                                   new_train_state)
from jaxcls.training.workdir import WorkdirLock, check_config as check_workdir_config
from jaxcls.training.workdir import record_changes as record_config_changes


class NonFiniteError(RuntimeError):
  """The loss or gradient norm stopped being finite (train.nonfinite='stop')."""


NONFINITE_POLICIES = ('stop', 'skip')  # config.train.nonfinite: raise NonFiniteError, or skip.
PARAMETERS_FILE = 'parameters.txt'
# config.train.ema_select: which weights (trained or averaged) an epoch's checkpoint stands for.
EMA_SELECT = ('better', 'ema', 'raw')  # The model's parameter table, written at the start.


def fit(config: ml_collections.ConfigDict, workdir: str, *,
        allow_config_change: bool = False) -> dict:
  """Trains `config` (validated and resolved: `jaxcls.experiment`) in `workdir`, validates every
  epoch, tests the best checkpoint; returns what it writes to results.json.

  A workdir holding a run of another config is refused (`workdir.check_config`)
  unless `allow_config_change`. SIGTERM/SIGINT checkpoint the current step and
  raise `Preempted`; a non-finite loss or gradient raises `NonFiniteError`
  (or, with train.nonfinite='skip', leaves that step out).
  """
  started = time.monotonic()
  # One run at a time in a workdir (a multi-host run's processes share it: the first holds it).
  with WorkdirLock(workdir, enabled=jax.process_index() == 0):
    run = _set_up(config, Path(workdir), allow_config_change)
    loop = _start(run)
    try:
      # SIGTERM/SIGINT set `guard.requested`; the handlers are restored however the loop ends.
      with PreemptionGuard() as guard:
        for epoch in range(loop.start_epoch, config.train.num_epochs):
          _enter_epoch(run, loop, epoch)
          epoch_metrics = _train_epoch(run, loop, epoch, guard)
          if _end_epoch(run, loop, epoch, epoch_metrics):
            break
    except BaseException:
      _finish_saves_before_raising(run)
      raise
    loop.progress.close()
    run.checkpointer.wait()
    test_metrics, best_step = _test_best_checkpoint(run, loop)
    return results.write(run, loop, test_metrics, best_step,
                         total_seconds=time.monotonic() - started)


def _finish_saves_before_raising(run) -> None:
  """Lets the checkpoint being written in the background finish before an error ends the
  run: an exception a moment after an epoch's save began would otherwise leave only its
  temporary directory (the interpreter shuts down under Orbax's writer) and lose that epoch."""
  try:
    run.checkpointer.wait()
  except CheckpointSaveError as e:  # Reported, but the error that stopped the run goes on.
    logging.error('%s', e)


@dataclasses.dataclass(frozen=True)
class Training:
  """What trains a config, whoever drives it: `fit`, or the learning-rate finder (`lr_find`)."""
  dataset: data.Dataset
  parts: RunParts
  plan: finetune.FinetunePlan
  steps_per_epoch: int
  optimizer: Callable  # trainable groups -> the phase's optax transformation.
  spec: Callable  # (Phase, the epoch's Mixup or None) -> its StepSpec.
  batch_sharding: jax.sharding.Sharding
  loss_info: dict
  mixup: Mixup  # As configured; the steps of an epoch from mixup.off_epoch on mix nothing.
  # (epoch, first step in it, cached) -> device batches of images, or of cached features.
  train_batches: Callable[[int, int, bool], Iterator]
  eval_batches: Callable[[str, bool], Iterator]  # (split name, cached) -> its padded batches.
  # The backbone's cached features for the phases that train the head alone
  # (`feature_cache.from_config`), or None; why.
  feature_cache: feature_cache.FeatureCache | None
  feature_cache_reason: str

  def cached(self, phase: finetune.Phase) -> bool:
    """Whether `phase` trains the head on cached features (it trains the head alone); a
    gradual plan's later phases, with the backbone open, take the full step."""
    return self.feature_cache is not None and feature_cache.head_only(phase.trainable.groups)

  def first_phase(self, seed: int) -> tuple[object, finetune.Phase, Callable, Callable]:
    """(step-0 train state, the plan's first phase, its jitted train and eval steps)."""
    trainable = self.plan.trainable_at(0)
    state = jax.device_put(
        new_train_state(self.parts.params, self.parts.model_state, self.optimizer(trainable),
                        seed), parallel.replicated(parallel.data_mesh()))
    state, phase = finetune.enter_phase(state, trainable, plan=self.plan,
                                        group_patterns=self.parts.group_patterns,
                                        train_graph=self.parts.train_graph,
                                        optimizer=self.optimizer)
    # The first epoch mixes whenever the config does (mixup.off_epoch is 0 or >= 1).
    epoch_mixup = self.mixup if self.mixup.enabled else None
    return (state, phase, *jit_steps(self.spec(phase, epoch_mixup, self.cached(phase))))


@dataclasses.dataclass(frozen=True)
class Run(Training):
  """What stays fixed for the whole run: its `Training`, and the workdir's bookkeeping."""
  config: ml_collections.ConfigDict
  workdir: Path
  is_main: bool
  writer: object
  checkpointer: Checkpointer
  plateau: ReduceLROnPlateau | None
  plateau_metric: str
  early_stopping: EarlyStopping | None
  stopping_metric: str


@dataclasses.dataclass
class Loop:
  """What changes as the run goes: the train state, its phase, mixing and steps, the history."""
  state: object
  phase: finetune.Phase
  mixup: Mixup | None  # The current epoch's (None: no mixing).
  train_fn: Callable
  eval_fn: Callable
  history: list
  plateau_state: PlateauState | None
  stopping_state: EarlyStoppingState | None
  step: int
  start_epoch: int
  start_in_epoch: int
  progress: ProgressReporter
  profile: StepTrace
  preview_fn: Callable | None
  stopped_early_at_epoch: int | None = None
  train_seconds: float = 0.0
  first_step_seconds: float | None = None
  images_seen: int = 0
  epoch_started: float = 0.0  # time.monotonic() at the start of the current epoch.
  epoch_first_step: int = 0  # The step the current epoch (or its resumed part) started at.
  partial_epoch_metrics: list | None = None  # Of a preempted epoch, from its checkpoint.


def _set_up(config, workdir: Path, allow_config_change: bool) -> Run:
  """The workdir, data, model, optimizer and steps of a run; nothing trained yet."""
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  logging.info('devices: %d x %s (process %d of %d); local: %s', jax.device_count(),
               jax.devices()[0].device_kind, jax.process_index(), jax.process_count(),
               jax.local_devices())
  logging.debug('config:\n%s', config)  # --verbosity=1; always in WORKDIR/config.json.
  checkpointer = Checkpointer(str(workdir / 'checkpoints'), config.checkpoint)
  latest = checkpointer.latest_step()
  differences = check_workdir_config(workdir, config, allow_change=allow_config_change,
                                     has_checkpoints=latest is not None)
  if is_main:
    record_config_changes(workdir, latest or 0, differences)
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
    logging.info('config: %s', workdir / 'config.json')
  training = build_training(config, workdir)
  plateau, plateau_metric = _plateau_from_config(config)
  early_stopping, stopping_metric = _early_stopping_from_config(config)
  return Run(**{f.name: getattr(training, f.name) for f in dataclasses.fields(Training)},
             config=config, workdir=workdir, is_main=is_main,
             writer=tracking.create_writer(config, workdir, is_main_process=is_main),
             checkpointer=checkpointer, plateau=plateau, plateau_metric=plateau_metric,
             early_stopping=early_stopping, stopping_metric=stopping_metric)


def build_training(config, workdir: Path,
                   learning_rate_fn: optax.Schedule | None = None) -> Training:
  """The data, model, fine-tuning plan, optimizer and steps of `config`; nothing trained, no
  checkpoint. `learning_rate_fn` replaces the config's schedule (the finder's sweep) in the
  same per-group optimizer: frozen groups, multipliers and weight decay as the run has them."""
  dataset = _load_data(config, workdir)
  parts = build_run(config, dataset.class_names)
  _log_model(config, parts, workdir)
  steps_per_epoch = _steps_per_epoch(config, dataset)
  if learning_rate_fn is None:
    learning_rate_fn = optim.learning_rate_schedule(config.optimizer, steps_per_epoch,
                                                    config.train.num_epochs)
  plan = finetune.plan_from_config(config.finetune, parts.groups, config.train.num_epochs,
                                   parts.tied_groups)
  logging.info('parameter groups: %s; fine-tuning %s: %s', ', '.join(plan.groups),
               config.finetune.strategy, '; '.join(
                   f'from epoch {e}: {", ".join(t)}' for e, t in plan.phases))
  labels = parts.labels()
  optimizer = lambda trainable: optim.create_optimizer(  # noqa: E731
      config.optimizer, learning_rate_fn, labels, trainable, plan.lr_multipliers)
  loss_fn, loss_info = _loss_from_config(config, dataset)
  mixup = mixing.from_config(config.mixup)  # Smoothing lives in the loss.
  batch_sharding = parallel.batch_sharded(parallel.data_mesh())
  cache, cache_reason = feature_cache.from_config(config, workdir, dataset, parts, plan,
                                                  mixup.enabled, batch_sharding)
  return Training(dataset=dataset, parts=parts, plan=plan, steps_per_epoch=steps_per_epoch,
                  optimizer=optimizer,
                  spec=_step_spec_factory(config, parts, loss_fn, mixup),
                  batch_sharding=batch_sharding, loss_info=loss_info, mixup=mixup,
                  train_batches=_train_batches_factory(config, dataset, batch_sharding, cache),
                  eval_batches=_eval_batches_factory(config, dataset, batch_sharding, cache),
                  feature_cache=cache, feature_cache_reason=cache_reason)


def _load_data(config, workdir: Path) -> data.Dataset:
  try:
    dataset = data.load_dataset(config.data, str(workdir))
  except ConfigError:
    raise
  except (ValueError, FileNotFoundError) as e:  # The data's own problems: the user's to fix.
    raise ConfigError(f'config.data.source={config.data.source!r}: {e}') from e
  for split in ('train', 'val', 'test'):
    if len(getattr(dataset, split)) == 0:
      raise ConfigError(f'config.data.split={tuple(config.data.split)}: the {split} split of '
                        f'{config.data.source} is empty; val picks the best checkpoint and '
                        'test reports it, so every split needs examples')
  logging.info('data %s: %d classes; train %d, val %d, test %d', config.data.source,
               len(dataset.class_names), len(dataset.train), len(dataset.val), len(dataset.test))
  return dataset


def _steps_per_epoch(config, dataset) -> int:
  batch_size = config.train.batch_size
  epoch_length = data.train_epoch_length(len(dataset.train), config.data)
  if epoch_length < batch_size:
    raise ConfigError(f'config.train.batch_size={batch_size}: the train split has only '
                      f'{epoch_length} examples per epoch, fewer than one batch; use a smaller '
                      'batch size (or more training data)')
  return data.steps_per_epoch(epoch_length, batch_size)


def _log_model(config, parts: RunParts, workdir: Path) -> None:
  info = parts.pretrained
  if info is not None:
    logging.info('%s weights %s (%s layout, sha256 %s) from %s; input %d, resize %d %s, mean %s, '
                 'std %s', config.model.name, info.tag or '(no tag)', info.layout,
                 info.sha256[:12], info.source, config.data.image_size,
                 config.data.resize_size, config.data.interpolation, config.data.mean,
                 config.data.std)
  if parts.tasks is not None:
    logging.info('tasks (%s): %s', config.tasks.mode,
                 ', '.join(f'{n} {v}' for n, v in zip(parts.tasks.names, parts.tasks.values)))
  flat = results.flat_names(parts.params)
  table = parameter_overview.get_parameter_overview(flat, include_stats=False)
  path = workdir / PARAMETERS_FILE
  if jax.process_index() == 0:
    path.write_text(table + '\n')
  logging.info('%s: %s parameters (the table: %s)', config.model.name,
               f'{parameter_overview.count_parameters(flat):,}', path)
  logging.debug('parameters of %s:\n%s', config.model.name, table)


def _step_spec_factory(config, parts: RunParts, loss_fn, mixup) -> Callable:
  """(Phase, Mixup or None, cached) -> the StepSpec of its jitted steps; cached: the head-only
  steps on cached features (`feature_cache`).

  The train metrics are named for mixing whenever the config mixes, also in the
  epochs after `mixup.off_epoch` (an unmixed example's dominant label is its
  label), so every epoch's train metrics have the same names.
  """
  tasks = parts.tasks
  weights = None
  if parts.heads_per_task:
    weights = tuple(config.tasks.loss_weights) or (1.0,) * len(tasks.names)
  metrics_cls = eval_metrics_class(len(parts.class_names), tasks)
  train_metrics_cls = train_metrics_class(tasks, mixing=mixup.enabled)
  return lambda phase, epoch_mixup, cached: StepSpec(
      train_graph=phase.graphdef, eval_graph=parts.eval_graph, tx=phase.tx,
      metrics_cls=metrics_cls, mean=config.data.mean, std=config.data.std,
      dtype=config.model.dtype, loss_fn=loss_fn, augment=config.data.augment, mixup=epoch_mixup,
      trainable=phase.trainable, task_loss_weights=weights, train_metrics_cls=train_metrics_cls,
      grad_accum_steps=config.train.grad_accum_steps, ema_decay=config.train.ema_decay,
      ema_warmup=config.train.ema_warmup, on_features=cached)


def _train_batches_factory(config, dataset, batch_sharding,
                           cache: feature_cache.FeatureCache | None
                           ) -> Callable[[int, int, bool], Iterator]:
  images = _image_batches_factory(config, dataset, batch_sharding)
  if cache is None:
    return lambda epoch, start, cached=False: images(epoch, start)
  return lambda epoch, start, cached: (parallel.prefetch_to_device(
      cache.train_batches(epoch, start), batch_sharding, config.data.prefetch) if cached
      else images(epoch, start))


def _image_batches_factory(config, dataset, batch_sharding) -> Callable[[int, int], Iterator]:
  batch_size = config.train.batch_size
  if config.data.on_device:
    device_set = DeviceTrainSet(dataset.train, config.data, batch_sharding, seed=config.seed)
    return lambda epoch, start: device_set.batches(global_batch_size=batch_size, epoch=epoch,
                                                   start_step=start)
  return lambda epoch, start: parallel.prefetch_to_device(
      data.train_batches(dataset.train, config.data, global_batch_size=batch_size,
                         seed=config.seed, epoch=epoch, start_step=start,
                         process_index=jax.process_index(), process_count=jax.process_count()),
      batch_sharding, config.data.prefetch)


def _eval_batches_factory(config, dataset, batch_sharding,
                          cache: feature_cache.FeatureCache | None
                          ) -> Callable[[str, bool], Iterator]:
  """(split name, cached) -> its padded batches on the devices: of cached features, or of
  images."""
  def batches(split: str, cached: bool = False) -> Iterator:
    if cached:
      host = cache.eval_batches(split)
    else:
      host = data.eval_batches(
          getattr(dataset, split), config.data,
          global_batch_size=config.train.eval_batch_size or config.train.batch_size,
          process_index=jax.process_index(), process_count=jax.process_count())
    return parallel.prefetch_to_device(host, batch_sharding, config.data.prefetch)

  return batches


def _start(run: Run) -> Loop:
  """Step 0, or the latest checkpoint (state, history, plateau and early stopping) of a rerun."""
  config, parts = run.config, run.parts
  replicated = parallel.replicated(parallel.data_mesh())

  def fresh_state(trainable):
    return jax.device_put(new_train_state(parts.params, parts.model_state,
                                          run.optimizer(trainable), config.seed,
                                          ema=config.train.ema_decay > 0), replicated)

  def restore(step):
    # The optimizer state has the shape of the saved phase's optimizer.
    trainable = tuple(run.checkpointer.restore_meta(step)['trainable_groups'])
    return (trainable, *run.checkpointer.restore(step, fresh_state(trainable)))

  found = run.checkpointer.newest_restorable(restore, set_aside=run.is_main)
  plateau_state = run.plateau.init() if run.plateau else None
  stopping_state = run.early_stopping.init() if run.early_stopping else None
  history, partial_epoch_metrics = [], None
  if found is None:
    trainable = run.plan.trainable_at(0)
    state = fresh_state(trainable)
  else:
    latest, (trainable, state, meta) = found
    _check_resumable(run, meta)
    history = meta['history']
    partial_epoch_metrics = meta.get('partial_epoch_metrics')
    if run.plateau is not None and 'plateau' in meta:
      plateau_state = PlateauState.from_dict(meta['plateau'])
    if run.early_stopping is not None and 'early_stopping' in meta:
      stopping_state = EarlyStoppingState.from_dict(meta['early_stopping'])
    logging.info('resumed from the checkpoint at step %d (epoch %d)', latest,
                 latest // run.steps_per_epoch)
  state, phase = finetune.enter_phase(state, trainable, plan=run.plan,
                                      group_patterns=parts.group_patterns,
                                      train_graph=parts.train_graph, optimizer=run.optimizer)
  step = int(state.step)
  start_epoch, start_in_epoch = divmod(step, run.steps_per_epoch)
  epoch_mixup = mixing.mixup_at_epoch(run.mixup, config.mixup, start_epoch)
  train_fn, eval_fn = jit_steps(run.spec(phase, epoch_mixup, run.cached(phase)))
  stopped_early_at_epoch = None
  if stopping_state is not None and stopping_state.should_stop:  # A rerun of a stopped run.
    stopped_early_at_epoch, start_epoch = start_epoch, config.train.num_epochs
  preview_path = run.workdir / FIRST_BATCH_PNG
  preview_fn = (jit_preview(augment_config=config.data.augment, mixup=epoch_mixup)
                if run.is_main and jax.process_count() == 1 and not preview_path.exists()
                and not run.cached(phase) else None)  # Cached features: no images to show.
  return Loop(state=state, phase=phase, mixup=epoch_mixup, train_fn=train_fn, eval_fn=eval_fn,
              history=history, plateau_state=plateau_state, stopping_state=stopping_state, step=step,
              start_epoch=start_epoch, start_in_epoch=start_in_epoch,
              progress=ProgressReporter(run.steps_per_epoch * config.train.num_epochs,
                                        run.writer, initial_step=step),
              profile=StepTrace(str(run.workdir), start=step + 1,
                                num_steps=config.train.profile_steps if run.is_main else 0),
              preview_fn=preview_fn, stopped_early_at_epoch=stopped_early_at_epoch,
              partial_epoch_metrics=partial_epoch_metrics if start_in_epoch else None)


def _check_resumable(run: Run, meta: dict) -> None:
  if meta['steps_per_epoch'] != run.steps_per_epoch:
    config = run.config
    raise ConfigError(
        f'{run.workdir}: its checkpoints were made with {meta["steps_per_epoch"]} steps per '
        f'epoch, this config gives {run.steps_per_epoch} (train.batch_size='
        f'{config.train.batch_size}, data.epoch_examples={config.data.epoch_examples}); '
        'use a new --workdir for a different batch size, epoch length or data set')


def _enter_epoch(run: Run, loop: Loop, epoch: int) -> None:
  """Switches to the fine-tuning phase and the mixing of `epoch` where they differ: re-jits
  once per change."""
  trainable = run.plan.trainable_at(epoch)
  epoch_mixup = mixing.mixup_at_epoch(run.mixup, run.config.mixup, epoch)
  if trainable == loop.phase.trainable.groups and epoch_mixup == loop.mixup:
    return
  was_cached = run.cached(loop.phase)
  if trainable != loop.phase.trainable.groups:
    logging.info('epoch %d: training %s (frozen: %s)', epoch + 1, ', '.join(trainable),
                 ', '.join(run.plan.frozen_at(epoch)) or 'none')
    loop.state, loop.phase = finetune.enter_phase(
        loop.state, trainable, plan=run.plan, group_patterns=run.parts.group_patterns,
        train_graph=run.parts.train_graph, optimizer=run.optimizer, previous=loop.phase)
  if epoch_mixup != loop.mixup:
    logging.info('epoch %d: Mixup/CutMix off from here on (mixup.off_epoch=%d)', epoch + 1,
                 run.config.mixup.off_epoch)
    loop.mixup = epoch_mixup
  cached = run.cached(loop.phase)
  if cached != was_cached:
    logging.info('epoch %d: the backbone opens: the full forward pass from here on, not '
                 'the cached features', epoch + 1)
  loop.train_fn, loop.eval_fn = jit_steps(run.spec(loop.phase, loop.mixup, cached))


def _train_epoch(run: Run, loop: Loop, epoch: int, guard: PreemptionGuard):
  """The epoch's train steps (from the resumed position in the first); its merged metrics."""
  config = run.config
  loop.epoch_started = epoch_started = time.monotonic()
  # A preempted epoch resumes with the metrics of its steps before the signal.
  earlier, loop.partial_epoch_metrics = loop.partial_epoch_metrics, None
  loop.epoch_first_step = epoch * run.steps_per_epoch if earlier else loop.step
  epoch_metrics = interval_metrics = None
  for batch in run.train_batches(epoch, loop.start_in_epoch if epoch == loop.start_epoch else 0,
                                 run.cached(loop.phase)):
    if loop.preview_fn is not None:  # Before the step, which donates the state's buffers.
      write_first_batch(loop.preview_fn(loop.state.rng, loop.state.step, batch['image']),
                        run.workdir / FIRST_BATCH_PNG, run.writer, loop.step)
      loop.preview_fn = None
    step_metrics = _step(run, loop, batch)
    interval_metrics = step_metrics if interval_metrics is None else interval_metrics.merge(
        step_metrics)
    if epoch_metrics is None and earlier:
      epoch_metrics = _restored_metrics(earlier, like=step_metrics)
    epoch_metrics = step_metrics if epoch_metrics is None else epoch_metrics.merge(step_metrics)
    loop.progress(loop.step)
    if loop.step % config.train.log_every_steps == 0:
      run.writer.write_scalars(loop.step, _prefixed('train', _finite_or_stop(
          interval_metrics.compute(), config, run.checkpointer)))
      interval_metrics = None
      run.checkpointer.check()  # A background save that failed stops the run now.
    if guard.requested:  # SIGTERM/SIGINT: this step's state, then stop.
      _finite_or_stop(epoch_metrics.compute(), config, run.checkpointer)
      # The epoch's metrics so far go with it: the resumed epoch's train metrics cover all of it.
      meta = dict(_meta(run, loop, epoch), partial_epoch_metrics=[
          np.asarray(leaf).tolist() for leaf in jax.tree.leaves(epoch_metrics)])
      run.checkpointer.save(loop.state, meta=meta, metrics=_never_best(config))
      run.checkpointer.wait()
      raise Preempted(guard.requested, loop.step, str(run.workdir))
  jax.block_until_ready(loop.state)
  loop.train_seconds += time.monotonic() - epoch_started
  loop.profile.close()  # At the latest at the epoch's end: the trace shows train steps only.
  return epoch_metrics


def _restored_metrics(leaves: list, like):
  """The metrics collection a preempted epoch saved (`partial_epoch_metrics`), rebuilt in the
  structure and dtypes of `like` (this epoch's first step's); None if they do not fit."""
  template = jax.tree.leaves(like)
  if len(leaves) != len(template):
    logging.warning('the checkpoint\'s partial-epoch metrics do not fit this run\'s; the '
                    'epoch\'s train metrics cover the steps after the resume only')
    return None
  return jax.tree.unflatten(jax.tree.structure(like), [
      jnp.asarray(value, leaf.dtype) for value, leaf in zip(leaves, template)])


def _step(run: Run, loop: Loop, batch):
  """One train step; the first is timed apart (it compiles) and turns out-of-memory into advice."""
  started = time.monotonic()
  if loop.first_step_seconds is None:
    with _out_of_memory_hint(run.config):
      loop.state, step_metrics = loop.train_fn(loop.state, batch)
      jax.block_until_ready(loop.state)
    loop.first_step_seconds = time.monotonic() - started
  else:
    loop.state, step_metrics = loop.train_fn(loop.state, batch)
    loop.images_seen += run.config.train.batch_size
  loop.step += 1
  loop.profile(loop.step, loop.state)
  return step_metrics


def _end_epoch(run: Run, loop: Loop, epoch: int, epoch_metrics) -> bool:
  """Validation, ReduceLROnPlateau, the epoch's checkpoint; True when early stopping stops."""
  config = run.config
  with loop.progress.timed('eval'):
    val_metrics, averaged = _validate(run, loop)
  train_summary = {k: float(v) for k, v in _finite_or_stop(
      epoch_metrics.compute(), config, run.checkpointer).items()}
  _trained_or_stop(run, loop, epoch, train_summary, val_metrics)
  train_summary[SKIPPED] = int(train_summary[SKIPPED])
  entry = dict(epoch=epoch + 1, step=loop.step, train=train_summary, val=val_metrics,
               **averaged, seconds=time.monotonic() - loop.epoch_started)
  if run.plateau is not None:
    _update_plateau(run, loop, epoch, val_metrics[run.plateau_metric])
    entry['lr_scale'] = loop.plateau_state.scale
  if run.early_stopping is not None:
    loop.stopping_state = run.early_stopping.update(loop.stopping_state,
                                                    val_metrics[run.stopping_metric])
  run.writer.write_scalars(loop.step, {
      **_prefixed('val', val_metrics), 'epoch': epoch + 1,
      **{k: v for name in ('val_raw', 'val_ema') if name in averaged
         for k, v in _prefixed(name, averaged[name]).items()},
      **({'lr_scale': loop.plateau_state.scale} if run.plateau else {})})
  loop.history.append(entry)
  trained = averaged.get('val_raw', val_metrics)  # The trained weights'; then the EMA's.
  logging.info('epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f%s',
               epoch + 1, config.train.num_epochs, train_summary['loss'],
               train_accuracy(train_summary), trained['loss'], trained['accuracy'],
               _ema_summary(averaged))
  with loop.progress.timed('checkpoint'):
    meta = dict(_meta(run, loop, epoch + 1), **_weights_meta(averaged))
    run.checkpointer.save(loop.state, meta=meta, metrics=val_metrics)
  # After the save: a sweep's pruner stops the run here (TrialPruned), its epoch kept.
  run.writer.flush()
  stopping = loop.stopping_state
  if stopping is None or not stopping.should_stop:
    return False
  loop.stopped_early_at_epoch = epoch + 1
  logging.info('early stopping after epoch %d: val %s has not improved by %g for %d epochs '
               '(best %.5g at epoch %d)', epoch + 1, run.stopping_metric,
               run.early_stopping.min_delta, run.early_stopping.patience, stopping.best,
               stopping.best_epoch)
  return True


def _validate(run: Run, loop: Loop) -> tuple[dict[str, float], dict]:
  """(the epoch's validation metrics, {} or, with an EMA, {'val_raw', 'val_ema', 'weights'}).

  With an EMA both the trained and the averaged weights are validated, and the
  epoch's metrics are those of the weights `train.ema_select` picks ('better':
  by checkpoint.best_metric and best_mode), which its checkpoint then stands for.
  """
  config = run.config
  cached = run.cached(loop.phase)
  if loop.state.ema is None:
    return evaluate(loop.eval_fn, loop.state, run.eval_batches('val', cached)), {}
  # One pass over the split: each batch is read (and decoded) once for both weights.
  raw, ema = evaluate_each(loop.eval_fn, (loop.state, ema_view(loop.state)),
                           run.eval_batches('val', cached))
  weights = config.train.ema_select
  if weights == 'better':
    metric, higher = config.checkpoint.best_metric, config.checkpoint.best_mode == 'max'
    ema_better = ema[metric] > raw[metric] if higher else ema[metric] < raw[metric]
    weights = 'ema' if ema_better else 'raw'
  return (ema if weights == 'ema' else raw), dict(val_raw=raw, val_ema=ema, weights=weights)


def _ema_summary(averaged: dict) -> str:
  if not averaged:
    return ''
  return (f' | ema val loss {averaged["val_ema"]["loss"]:.4f} acc '
          f'{averaged["val_ema"]["accuracy"]:.4f} ({averaged["weights"]} kept)')


def _weights_meta(averaged: dict) -> dict:
  """What a checkpoint says of the weights it stands for (`checkpoint_weights`)."""
  return {'weights': averaged['weights']} if averaged else {}


def _update_plateau(run: Run, loop: Loop, epoch: int, value: float) -> None:
  """ReduceLROnPlateau after a validation; the next epoch's steps read its scale."""
  loop.plateau_state = run.plateau.update(loop.plateau_state, value)
  scale = loop.plateau_state.scale
  if scale != optim.plateau_scale(loop.state.opt_state):
    logging.info('epoch %d: val %s has not improved for %d epochs: learning rate scale %g',
                 epoch + 1, run.plateau_metric, run.plateau.patience, scale)
  loop.state = loop.state.replace(opt_state=optim.set_plateau_scale(loop.state.opt_state, scale))


def _meta(run: Run, loop: Loop, epochs_done: int) -> dict:
  """What a checkpoint keeps beside the state (JSON): enough to resume and to report."""
  meta = dict(epoch=epochs_done, steps_per_epoch=run.steps_per_epoch, history=loop.history,
              class_names=list(run.dataset.class_names),
              trainable_groups=list(loop.phase.trainable.groups))
  if run.plateau is not None:
    meta['plateau'] = loop.plateau_state.to_dict()
  if run.early_stopping is not None:
    meta['early_stopping'] = loop.stopping_state.to_dict()
  return meta


def _test_best_checkpoint(run: Run, loop: Loop) -> tuple[dict[str, float], int]:
  """Test metrics of the best checkpoint by validation (its params and model state, or its
  EMA's where the checkpoint stands for them), its step."""
  best_step = run.checkpointer.best_step()
  params, model_state = run.checkpointer.restore_model(
      best_step, loop.state.params, loop.state.model_state,
      ema=checkpoint_weights(run.checkpointer.restore_meta(best_step)) == 'ema')
  test_metrics = evaluate(loop.eval_fn, loop.state.replace(params=params, model_state=model_state),
                          run.eval_batches('test', run.cached(loop.phase)))
  return test_metrics, best_step


def evaluate(eval_fn, state, batches: Iterator) -> dict[str, float]:
  """Metrics of `state` on a whole split's device batches (`Run.eval_batches`), the padding
  of the last batch masked out."""
  return evaluate_each(eval_fn, (state,), batches)[0]


def evaluate_each(eval_fn, states, batches: Iterator) -> list[dict[str, float]]:
  """`evaluate` of each of `states` in one pass over `batches`."""
  totals = [None] * len(states)
  for batch in batches:
    for i, state in enumerate(states):
      batch_metrics = eval_fn(state, batch)
      totals[i] = batch_metrics if totals[i] is None else totals[i].merge(batch_metrics)
  return [{k: float(v) for k, v in total.compute().items()} for total in totals]


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
  return {f'{prefix}_{k}': float(v) for k, v in metrics.items()}


def _finite_or_stop(computed: dict, config, checkpointer: Checkpointer) -> dict:
  """`computed` train metrics without their non-finite marker, after acting on it."""
  first = int(computed.pop(NONFINITE))
  if first == NO_STEP:
    return computed
  if config.train.nonfinite == 'skip':
    logging.warning('non-finite loss or gradient norm at step %d: that step (and any other '
                    'such in this interval) left the state unchanged', first)
    return computed
  raise NonFiniteError(
      f'non-finite loss or gradient norm at step {first}; no checkpoint holds it. '
      + _last_good(checkpointer) + ' Lower optimizer.learning_rate, look at the data, or pass '
      "--config.train.nonfinite=skip to leave such steps out.")


def _last_good(checkpointer: Checkpointer) -> str:
  latest = checkpointer.latest_step()
  return (f'The last good checkpoint is step {latest} in {checkpointer.directory}.'
          if latest is not None else 'The run has no checkpoint yet.')


def _trained_or_stop(run: Run, loop: Loop, epoch: int, train_summary: dict,
                     val_metrics: dict) -> None:
  """Stops a run that no longer trains: every step of the epoch skipped (train.nonfinite=
  'skip' leaves such steps out, but an epoch of them changes nothing), or validation metrics
  that are not finite (a model that diverged). Neither is checkpointed."""
  steps = loop.step - loop.epoch_first_step
  skipped = int(train_summary.get(SKIPPED, 0))
  limit = run.config.train.get('max_skipped_fraction', 0.5)
  if steps and skipped > limit * steps:
    which = (f'every step of epoch {epoch + 1} ({steps}) had' if skipped == steps else
             f'{skipped} of the {steps} steps of epoch {epoch + 1} had')
    raise NonFiniteError(
        f'{which} a non-finite loss or gradient and {"was" if skipped == steps else "were"} '
        f'skipped (train.nonfinite=skip; the most an epoch may skip is '
        f'train.max_skipped_fraction={limit}): the run is not training. '
        f'{_last_good(run.checkpointer)} Lower optimizer.learning_rate or look at the data.')
  bad = {k: v for k, v in val_metrics.items() if not math.isfinite(v)}
  if bad:
    raise NonFiniteError(
        f'after epoch {epoch + 1} the validation metrics are not finite ({bad}): the model '
        f'diverged ({skipped} of its {steps} steps were skipped). '
        f'{_last_good(run.checkpointer)} Lower optimizer.learning_rate.')


def _never_best(config) -> dict:
  """Metrics for a mid-epoch (preemption) checkpoint: never the best, only the latest."""
  worst = float('-inf') if config.checkpoint.best_mode == 'max' else float('inf')
  return {config.checkpoint.best_metric: worst}


@contextlib.contextmanager
def _out_of_memory_hint(config):
  """Turns XLA's out-of-memory error at the first step into advice."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e) and 'out of memory' not in str(e).lower():
      raise
    raise ConfigError(
        f'config.train.batch_size={config.train.batch_size}: out of device memory at the first '
        f'step; try --config.train.batch_size={max(config.train.batch_size // 2, 1)}'
        + ('' if config.model.dtype == 'bfloat16' else ' or --config.model.dtype=bfloat16')
        + f' ({str(e).splitlines()[0][:200]})') from e


def _plateau_from_config(config) -> tuple[ReduceLROnPlateau | None, str]:
  """(ReduceLROnPlateau or None when off, the validation metric it watches)."""
  p = config.plateau
  metric = p.metric or config.checkpoint.best_metric
  if not p.enabled:
    return None, metric
  return ReduceLROnPlateau(mode=p.mode or config.checkpoint.best_mode, factor=p.factor,
                           patience=p.patience, threshold=p.threshold,
                           threshold_mode=p.threshold_mode, cooldown=p.cooldown,
                           min_scale=p.min_scale), metric


def _early_stopping_from_config(config) -> tuple[EarlyStopping | None, str]:
  """(EarlyStopping or None when off, the validation metric it watches)."""
  e = config.early_stopping
  metric = e.metric or config.checkpoint.best_metric
  if not e.patience:
    return None, metric
  return EarlyStopping(patience=e.patience, min_delta=e.min_delta,
                       mode=e.mode or config.checkpoint.best_mode), metric


def _loss_from_config(config, dataset) -> tuple[losses.LossFn, dict]:
  """The training loss `config.loss` asks for (class weights from the train split), and a
  JSON summary of it for results.json."""
  c, num_classes = config.loss, len(dataset.class_names)
  weights = None
  if c.class_weights != 'none':
    counts = data.class_counts(data.source_labels(dataset.train), num_classes)
    try:
      weights = losses.class_weights_from_counts(counts, c.class_weights, c.class_weights_beta)
    except ValueError as e:
      raise ConfigError(f'config.loss.class_weights={c.class_weights!r}: {e} '
                        f'(train split class counts {counts.tolist()})') from e
    logging.info('class weights (%s): %s', c.class_weights,
                 ', '.join(f'{n} {w:.3g}' for n, w in zip(dataset.class_names, weights)))
  alpha = tuple(c.focal_alpha)
  if len(alpha) not in (0, 1, num_classes):
    raise ConfigError(f'config.loss.focal_alpha={alpha}: expected one value or one per class '
                      f'({num_classes})')
  loss_fn = losses.make_loss_fn(
      c.name, label_smoothing=config.train.label_smoothing, focal_gamma=c.focal_gamma,
      focal_alpha=(alpha[0] if len(alpha) == 1 else alpha) if alpha else None,
      class_weights=weights)
  return loss_fn, dict(name=c.name, label_smoothing=config.train.label_smoothing,
                       class_weights=None if weights is None else weights.tolist())


def config_errors(train_config: ml_collections.ConfigDict, device_count: int = 1) -> list[str]:
  """What is wrong with `config.train`; the batches split evenly over `device_count` devices."""
  c, p = train_config, ConfigProblems('train', train_config)
  p.check(c.num_epochs >= 1, 'num_epochs', 'must be >= 1')
  for field in ('batch_size', 'eval_batch_size'):
    p.check(c[field] >= (1 if field == 'batch_size' else 0), field, 'must be positive')
    p.check(c[field] % device_count == 0, field,
            f'must be divisible by the device count ({device_count})')
  for field, why in losses.field_problems({'label_smoothing': c.label_smoothing}):
    p.report(field, why)  # The loss's own rule: it does the smoothing.
  p.check(c.log_every_steps >= 1, 'log_every_steps', 'must be >= 1')
  p.check(c.nonfinite in NONFINITE_POLICIES, 'nonfinite', f'expected {either(NONFINITE_POLICIES)}')
  p.check(0 < c.max_skipped_fraction <= 1, 'max_skipped_fraction', 'must be in (0, 1]')
  p.check(c.grad_accum_steps >= 1, 'grad_accum_steps', 'must be >= 1 (1: off)')
  p.check(0 <= c.ema_decay < 1, 'ema_decay', 'must be in [0, 1) (0: off)')
  p.check(c.ema_select in EMA_SELECT, 'ema_select', f'expected one of {", ".join(EMA_SELECT)}')
  if c.grad_accum_steps > 1:
    micro = c.batch_size // c.grad_accum_steps
    p.check(c.batch_size % c.grad_accum_steps == 0 and micro % 2 == 0
            and micro % device_count == 0, 'grad_accum_steps',
            f'batch_size={c.batch_size} must divide into grad_accum_steps micro-batches of '
            f'an even size (Mixup pairs examples within one), each divisible by the device '
            f'count ({device_count})')
  return p
