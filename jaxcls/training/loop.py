"""The training loop: data, model, jitted steps, evaluation, checkpoints, results.

The loop owns every side effect (logging, checkpoints, progress); the steps it
calls are pure (`jaxcls.training.steps`). A rerun with the same workdir resumes from
the latest checkpoint: the train state holds the model, optimizer, step and
RNG, and the data position is derived from the step, so the resumed run sees
the same batches an uninterrupted one would. After each validation the loop
updates ReduceLROnPlateau (whose scale the state carries into the step) and
early stopping, both kept in the checkpoint's meta.
"""

import contextlib
import dataclasses
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import parameter_overview
from flax import nnx
from PIL import Image

from jaxcls import data
from jaxcls.training import finetune, losses, parallel
from jaxcls.training.checkpointing import Checkpointer
from jaxcls.errors import ConfigError, ConfigProblems, either
from jaxcls.data.on_device import DeviceTrainSet
from jaxcls.training.metrics import NONFINITE, eval_metrics_class, train_accuracy, train_metrics_class
from jaxcls.data.mixing import Mixup
from jaxcls.models import model_from_config
from jaxcls.training.optim import create_optimizer, learning_rate_schedule
from jaxcls.training.plateau import EarlyStopping, EarlyStoppingState, PlateauState, ReduceLROnPlateau
from jaxcls.training.preemption import Preempted, PreemptionGuard
from jaxcls.training.profiling import StepTrace
from jaxcls.training.steps import NO_STEP, create_train_state, jit_preview, jit_steps
from jaxcls.data.label_tasks import tasks_from_class_names
from jaxcls.training.workdir import check_config as check_workdir_config
from jaxcls.training.progress import ProgressReporter, create_writer


def evaluate(eval_fn, state, source, config: ml_collections.ConfigDict,
             sharding: jax.sharding.Sharding) -> dict[str, float]:
  """Metrics of `state` on a whole split, the padding of the last batch masked out."""
  batches = data.eval_batches(
      source, config.data, global_batch_size=config.train.eval_batch_size or config.train.batch_size,
      process_index=jax.process_index(), process_count=jax.process_count())
  total = None
  for batch in parallel.prefetch_to_device(batches, sharding, config.data.prefetch):
    batch_metrics = eval_fn(state, batch)
    total = batch_metrics if total is None else total.merge(batch_metrics)
  return {k: float(v) for k, v in total.compute().items()}


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
  return {f'{prefix}_{k}': float(v) for k, v in metrics.items()}


def fit(config: ml_collections.ConfigDict, workdir: str, *,
        allow_config_change: bool = False) -> dict:
  """Trains, validates every epoch, tests the best checkpoint; returns and writes results.json.

  A workdir holding a run of another config is refused (`jaxcls.training.workdir`)
  unless `allow_config_change`. SIGTERM/SIGINT checkpoint the current step and
  raise `Preempted`; a non-finite loss or gradient raises `NonFiniteError`
  (or, with train.nonfinite='skip', leaves that step out).
  """
  started = time.monotonic()
  workdir_path = Path(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  writer = create_writer(str(workdir_path), is_main_process=is_main)
  logging.info('devices: %d x %s (process %d of %d); local: %s', jax.device_count(),
               jax.devices()[0].device_kind, jax.process_index(), jax.process_count(),
               jax.local_devices())
  logging.info('config:\n%s', config)
  checkpoint_dir = workdir_path / 'checkpoints'
  check_workdir_config(workdir_path, config, allow_change=allow_config_change,
                       has_checkpoints=checkpoint_dir.is_dir() and any(
                           p.name.isdigit() for p in checkpoint_dir.iterdir()))
  if is_main:
    (workdir_path / 'config.json').write_text(config.to_json_best_effort(indent=2))

  dataset = data.load_dataset(config.data, str(workdir_path))
  num_classes = len(dataset.class_names)
  for split in ('train', 'val', 'test'):
    if len(getattr(dataset, split)) == 0:
      raise ConfigError(f'config.data.split={tuple(config.data.split)}: the {split} split of '
                        f'{config.data.source} is empty; val picks the best checkpoint and '
                        'test reports it, so every split needs examples')
  logging.info('data %s: %d classes; train %d, val %d, test %d', config.data.source, num_classes,
               len(dataset.train), len(dataset.val), len(dataset.test))

  tasks = tasks_from_class_names(dataset.class_names, config.tasks.names, config.tasks.separator)
  heads_per_task = tasks is not None and config.tasks.mode == 'heads'
  model, pretrained = model_from_config(config.model, dataset.class_names,
                                        tasks if heads_per_task else None, seed=config.seed,
                                        return_info=True)
  if pretrained is not None:
    logging.info('%s weights %s (%s layout, sha256 %s) from %s; input %d, resize %d %s, mean %s, '
                 'std %s', config.model.name, pretrained.tag or '(no tag)', pretrained.layout,
                 pretrained.sha256[:12], pretrained.source, config.data.image_size,
                 config.data.resize_size, config.data.interpolation, config.data.mean,
                 config.data.std)
  if tasks is not None:
    logging.info('tasks (%s): %s', config.tasks.mode,
                 ', '.join(f'{n} {v}' for n, v in zip(tasks.names, tasks.values)))

  batch_size = config.train.batch_size
  epoch_length = data.train_epoch_length(len(dataset.train), config.data)
  if epoch_length < batch_size:
    raise ConfigError(f'config.train.batch_size={batch_size}: the train split has only '
                      f'{epoch_length} examples per epoch, fewer than one batch; use a smaller '
                      'batch size (or more training data)')
  steps_per_epoch = data.steps_per_epoch(epoch_length, batch_size)
  num_steps = steps_per_epoch * config.train.num_epochs
  learning_rate_fn = learning_rate_schedule(config.optimizer, steps_per_epoch,
                                            config.train.num_epochs)
  plan = finetune.plan_from_config(config.finetune, finetune.group_names(model),
                                   config.train.num_epochs)
  labels = finetune.param_labels(model, nnx.state(model, nnx.Param))
  optimizer = lambda trainable: create_optimizer(  # noqa: E731
      config.optimizer, labels, trainable, plan.lr_multipliers)

  checkpointer = Checkpointer(str(checkpoint_dir), config.checkpoint)
  latest = checkpointer.latest_step()
  # The optimizer state has the shape of the saved phase's optimizer.
  trainable = tuple(checkpointer.restore_meta(latest)['trainable_groups']) if latest is not None \
      else plan.trainable_at(0)
  train_graph, eval_graph, state = create_train_state(model, optimizer(trainable), config.seed)
  del model
  flat_params = _flat_names(state.params)
  num_params = parameter_overview.count_parameters(flat_params)
  logging.info('parameters of %s:\n%s', config.model.name,
               parameter_overview.get_parameter_overview(flat_params, include_stats=False))
  logging.info('parameter groups: %s; fine-tuning %s: %s', ', '.join(plan.groups),
               config.finetune.strategy, '; '.join(
                   f'from epoch {e}: {", ".join(t)}' for e, t in plan.phases))

  mesh = parallel.data_mesh()
  replicated = parallel.replicated(mesh)
  state = jax.device_put(state, replicated)
  batch_sharding = parallel.batch_sharded(mesh)

  plateau, plateau_metric = _plateau_from_config(config)
  early_stopping, stopping_metric = _early_stopping_from_config(config)
  plateau_state = plateau.init() if plateau else None
  stopping_state = early_stopping.init() if early_stopping else None
  history = []
  if latest is not None:
    state, meta = checkpointer.restore(latest, state)
    if meta['steps_per_epoch'] != steps_per_epoch:
      raise ConfigError(
          f'{workdir}: its checkpoints were made with {meta["steps_per_epoch"]} steps per epoch, '
          f'this config gives {steps_per_epoch} (train.batch_size={batch_size}, '
          f'data.epoch_examples={config.data.epoch_examples}); '
          'use a new --workdir for a different batch size, epoch length or data set')
    history = meta['history']
    if plateau is not None and 'plateau' in meta:
      plateau_state = PlateauState.from_dict(meta['plateau'])
    if early_stopping is not None and 'early_stopping' in meta:
      stopping_state = EarlyStoppingState.from_dict(meta['early_stopping'])
    logging.info('resumed from the checkpoint at step %d (epoch %d)', latest, latest // steps_per_epoch)

  loss_fn, loss_info = _loss_from_config(config, dataset, num_classes)
  # Label smoothing lives in the loss alone; Mixup only mixes.
  mixup = Mixup(label_smoothing=0.0, **config.mixup.to_dict())
  metrics_cls = eval_metrics_class(num_classes, tasks)
  jit_for_phase = functools.partial(
      jit_steps, eval_graph=eval_graph, learning_rate_fn=learning_rate_fn,
      metrics_cls=metrics_cls, mean=config.data.mean, std=config.data.std,
      dtype=config.model.dtype, loss_fn=loss_fn, augment_config=config.data.augment, mixup=mixup,
      task_loss_weights=(tuple(config.tasks.loss_weights) or (1.0,) * len(tasks.names))
      if heads_per_task else None,
      train_metrics_cls=train_metrics_class(tasks, mixing=mixup.enabled))

  enter_phase = functools.partial(finetune.enter_phase, plan=plan, labels=labels,
                                  train_graph=train_graph, optimizer=optimizer)
  state, phase = enter_phase(state, trainable)
  train_fn, eval_fn = jit_for_phase(phase.graphdef, tx=phase.tx, trainable=phase.mask)

  if config.data.on_device:
    device_train_set = DeviceTrainSet(dataset.train, config.data, batch_sharding, seed=config.seed)
    train_batches = lambda epoch, start: device_train_set.batches(  # noqa: E731
        global_batch_size=batch_size, epoch=epoch, start_step=start)
  else:
    train_batches = lambda epoch, start: parallel.prefetch_to_device(  # noqa: E731
        data.train_batches(dataset.train, config.data, global_batch_size=batch_size,
                           seed=config.seed, epoch=epoch, start_step=start,
                           process_index=jax.process_index(), process_count=jax.process_count()),
        batch_sharding, config.data.prefetch)

  step = int(state.step)
  progress = ProgressReporter(num_steps, writer, initial_step=step)
  train_seconds, first_step_seconds, images_seen = 0.0, None, 0
  start_epoch, start_in_epoch = divmod(step, steps_per_epoch)
  preview_path = workdir_path / FIRST_BATCH_PNG
  preview_fn = (jit_preview(augment_config=config.data.augment, mixup=mixup)
                if is_main and jax.process_count() == 1 and not preview_path.exists() else None)
  stopped_early_at_epoch = None
  profile = StepTrace(str(workdir_path), start=step + 1,
                      num_steps=config.train.profile_steps if is_main else 0)
  if stopping_state is not None and stopping_state.should_stop:  # A rerun of a stopped run.
    stopped_early_at_epoch = start_epoch
    start_epoch = config.train.num_epochs
  def _meta(epochs_done, history, phase) -> dict:
    """What a checkpoint keeps beside the state (JSON): enough to resume and to report."""
    meta = dict(epoch=epochs_done, steps_per_epoch=steps_per_epoch, history=history,
                class_names=list(dataset.class_names), trainable_groups=list(phase.trainable))
    if plateau is not None:
      meta['plateau'] = plateau_state.to_dict()
    if early_stopping is not None:
      meta['early_stopping'] = stopping_state.to_dict()
    return meta

  # SIGTERM/SIGINT set `guard.requested`; the handlers are restored however the loop ends.
  with PreemptionGuard() as guard:
    for epoch in range(start_epoch, config.train.num_epochs):
      if plan.trainable_at(epoch) != phase.trainable:  # Re-jits once per phase.
        logging.info('epoch %d: training %s (frozen: %s)', epoch + 1,
                     ', '.join(plan.trainable_at(epoch)),
                     ', '.join(plan.frozen_at(epoch)) or 'none')
        state, phase = enter_phase(state, plan.trainable_at(epoch), previous=phase)
        train_fn, eval_fn = jit_for_phase(phase.graphdef, tx=phase.tx, trainable=phase.mask)
      epoch_started = time.monotonic()
      epoch_metrics = interval_metrics = None
      for batch in train_batches(epoch, start_in_epoch if epoch == start_epoch else 0):
        if preview_fn is not None:  # Before the step, which donates the state's buffers.
          _write_first_batch(preview_fn(state.rng, state.step, batch['image']), preview_path,
                             writer, step)
          preview_fn = None
        step_started = time.monotonic()
        if first_step_seconds is None:  # Includes compilation: keep it out of the images/s.
          with _out_of_memory_hint(config):
            state, step_metrics = train_fn(state, batch)
            jax.block_until_ready(state)
          first_step_seconds = time.monotonic() - step_started
        else:
          state, step_metrics = train_fn(state, batch)
          images_seen += batch_size
        step += 1
        profile(step, state)
        interval_metrics = step_metrics if interval_metrics is None else interval_metrics.merge(
            step_metrics)
        epoch_metrics = step_metrics if epoch_metrics is None else epoch_metrics.merge(step_metrics)
        progress(step)
        if step % config.train.log_every_steps == 0:
          writer.write_scalars(step, _prefixed('train', _finite_or_stop(
              interval_metrics.compute(), config, checkpointer)))
          interval_metrics = None
        if guard.requested:  # SIGTERM/SIGINT: this step's state, then stop.
          _finite_or_stop(epoch_metrics.compute(), config, checkpointer)
          checkpointer.save(state, meta=_meta(epoch, history, phase), metrics=_never_best(config))
          checkpointer.wait()
          raise Preempted(guard.requested, step, workdir)
      jax.block_until_ready(state)
      train_seconds += time.monotonic() - epoch_started
      profile.close()  # At the latest at the epoch's end: the trace shows train steps only.

      with progress.timed('eval'):
        val_metrics = evaluate(eval_fn, state, dataset.val, config, batch_sharding)
      train_summary = {k: float(v) for k, v in _finite_or_stop(
          epoch_metrics.compute(), config, checkpointer).items()}
      entry = dict(epoch=epoch + 1, step=step, train=train_summary, val=val_metrics,
                   seconds=time.monotonic() - epoch_started)
      if plateau is not None:
        plateau_state = plateau.update(plateau_state, val_metrics[plateau_metric])
        if plateau_state.scale != float(state.lr_scale):
          logging.info('epoch %d: val %s has not improved for %d epochs: learning rate scale %g',
                       epoch + 1, plateau_metric, plateau.patience, plateau_state.scale)
        # The next epoch's steps read it; the checkpoint below keeps it.
        state = state.replace(lr_scale=jax.device_put(
            jnp.asarray(plateau_state.scale, jnp.float32), replicated))
        entry['lr_scale'] = plateau_state.scale
      if early_stopping is not None:
        stopping_state = early_stopping.update(stopping_state, val_metrics[stopping_metric])
      writer.write_scalars(step, {**_prefixed('val', val_metrics), 'epoch': epoch + 1,
                                  **({'lr_scale': plateau_state.scale} if plateau else {})})
      writer.flush()
      history.append(entry)
      logging.info('epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f',
                   epoch + 1, config.train.num_epochs, train_summary['loss'],
                   train_accuracy(train_summary), val_metrics['loss'], val_metrics['accuracy'])
      meta = _meta(epoch + 1, history, phase)
      with progress.timed('checkpoint'):
        checkpointer.save(state, meta=meta, metrics=val_metrics)
      if stopping_state is not None and stopping_state.should_stop:
        stopped_early_at_epoch = epoch + 1
        logging.info('early stopping after epoch %d: val %s has not improved by %g for %d epochs '
                     '(best %.5g at epoch %d)', epoch + 1, stopping_metric,
                     early_stopping.min_delta, early_stopping.patience, stopping_state.best,
                     stopping_state.best_epoch)
        break
  progress.close()
  checkpointer.wait()

  best_step = checkpointer.best_step()
  # Shaped like the best step's phase: its optimizer state may differ from the last one's.
  best_trainable = checkpointer.restore_meta(best_step)['trainable_groups']
  best_state, _ = checkpointer.restore(best_step, state.replace(opt_state=jax.device_put(
      optimizer(best_trainable).init(state.params), replicated)))
  test_metrics = evaluate(eval_fn, best_state, dataset.test, config, batch_sharding)
  best_epoch = next(h for h in history if h['step'] == best_step)
  logging.info('test (best checkpoint, epoch %d by val %s): %s', best_epoch['epoch'],
               config.checkpoint.best_metric, test_metrics)
  writer.write_scalars(step, _prefixed('test', test_metrics))
  writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()
                        if isinstance(v, (bool, int, float, str))})
  writer.close()
  checkpointer.close()

  timed_steps = max(step - steps_per_epoch * start_epoch - start_in_epoch - 1, 0)
  results = dict(
      test=test_metrics, best_val=best_epoch['val'], best_epoch=best_epoch['epoch'],
      best_step=best_step, history=history, class_names=list(dataset.class_names),
      stopped_early_at_epoch=stopped_early_at_epoch,
      plateau=None if plateau is None else dict(metric=plateau_metric, **plateau_state.to_dict()),
      pretrained=None if pretrained is None else dataclasses.asdict(pretrained),
      loss=loss_info, mixup=config.mixup.to_dict() if mixup.enabled else None,
      num_params=int(num_params), num_examples=dict(train=len(dataset.train),
                                                    val=len(dataset.val), test=len(dataset.test)),
      test_is_val=dataset.test is dataset.val,
      finetune=dict(strategy=config.finetune.strategy, groups=list(plan.groups),
                    phases=[dict(epoch=e, trainable=list(t)) for e, t in plan.phases],
                    lr_multipliers=dict(plan.lr_multipliers)),
      tasks=None if tasks is None else dict(
          mode=config.tasks.mode, names=list(tasks.names), values=[list(v) for v in tasks.values]),
      devices=dict(count=jax.device_count(), kind=jax.devices()[0].device_kind,
                   processes=jax.process_count()),
      timings=dict(total_seconds=time.monotonic() - started, train_seconds=train_seconds,
                   first_step_seconds=first_step_seconds, train_images_per_second=(
                       images_seen / max(train_seconds - (first_step_seconds or 0), 1e-9)
                       if timed_steps else None)),
      config=config.to_dict())
  if is_main:
    (workdir_path / 'results.json').write_text(json.dumps(results, indent=2, default=_jsonable))
  return results


FIRST_BATCH_PNG = 'first_batch.png'


class NonFiniteError(RuntimeError):
  """The loss or gradient norm stopped being finite (train.nonfinite='stop')."""


def _finite_or_stop(computed: dict, config, checkpointer: Checkpointer) -> dict:
  """`computed` train metrics without their non-finite marker, after acting on it."""
  first = int(computed.pop(NONFINITE))
  if first == NO_STEP:
    return computed
  if config.train.nonfinite == 'skip':
    logging.warning('non-finite loss or gradient norm at step %d: that step (and any other '
                    'such in this interval) left the state unchanged', first)
    return computed
  latest = checkpointer.latest_step()
  raise NonFiniteError(
      f'non-finite loss or gradient norm at step {first}; no checkpoint holds it. The last '
      + (f'good checkpoint is step {latest} in {checkpointer.directory}' if latest is not None
         else 'run has no checkpoint yet')
      + '. Lower optimizer.learning_rate, look at the data, or pass '
      "--config.train.nonfinite=skip to leave such steps out.")


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


def _loss_from_config(config, dataset, num_classes: int) -> tuple[losses.LossFn, dict]:
  """The training loss `config.loss` asks for (class weights from the train split), and a
  JSON summary of it for results.json."""
  c = config.loss
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


def _write_first_batch(images, path: Path, writer, step: int) -> None:
  """The first train batch as the model sees it (augmented, mixed; before normalisation),
  as an image grid in `path` and in TensorBoard."""
  grid = image_grid(np.asarray(jax.device_get(images)))
  Image.fromarray(grid).save(path)
  if hasattr(writer, 'write_images'):  # Not the console fallback.
    writer.write_images(step, {'train/first_batch': grid[None]})
  logging.info('first train batch (augmented and mixed) written to %s', path)


def image_grid(images: np.ndarray, columns: int = 16, max_images: int = 128,
               min_side: int = 64) -> np.ndarray:
  """uint8 [N, H, W, 3] -> one uint8 [rows * H', columns * W', 3] grid, 2-pixel gaps, each
  image enlarged by a whole factor (nearest neighbour) to at least `min_side` pixels."""
  images = images[:max_images]
  count, height, width = images.shape[:3]
  factor = max(1, -(-min_side // max(height, width)))
  images = images.repeat(factor, axis=1).repeat(factor, axis=2)
  height, width, gap = height * factor, width * factor, 2
  columns = min(columns, count)
  rows = -(-count // columns)
  grid = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
  for i, image in enumerate(images):
    top, left = (i // columns) * (height + gap), (i % columns) * (width + gap)
    grid[top:top + height, left:left + width] = image
  return grid


def _flat_names(tree) -> dict[str, jax.Array]:
  """{'layer1/0/conv1/kernel': array, ...}: the flat mapping clu's overview prints."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {finetune.path_string(path): leaf for path, leaf in leaves}


def _flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _jsonable(value):
  if isinstance(value, (np.generic, jnp.ndarray)):
    return np.asarray(value).tolist()
  return str(value)


# train.nonfinite: what a step whose loss or gradient is not finite does.
NONFINITE_POLICIES = ('stop', 'skip')


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
  return p
