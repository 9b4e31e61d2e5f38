"""WORKDIR/results.json: what a finished run measured, and how it was set up.

The test metrics of the best checkpoint, the per-epoch history, the data,
model, loss, fine-tuning and device facts a comparison table needs, the
timings and the resolved config; also TensorBoard's test scalars and hparams.
"""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import parameter_overview

from jaxcls.training import workdir
from jaxcls.training.finetune import path_string


def write(run, loop, test_metrics: dict[str, float], best_step: int, *,
          total_seconds: float) -> dict:
  """Logs the test result, writes results.json (main process) and closes the writer."""
  config, dataset, plan, parts = run.config, run.dataset, run.plan, run.parts
  best_epoch = next(h for h in loop.history if h['step'] == best_step)
  weights = best_epoch.get('weights', 'raw')  # With an EMA: which weights were tested.
  logging.info('test (best checkpoint, epoch %d by val %s%s): %s', best_epoch['epoch'],
               config.checkpoint.best_metric, ', its EMA weights' if weights == 'ema' else '',
               test_metrics)
  run.writer.write_scalars(loop.step, {f'test_{k}': float(v) for k, v in test_metrics.items()})
  run.writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()
                            if isinstance(v, (bool, int, float, str))})
  run.writer.close()
  run.checkpointer.close()
  tasks = parts.tasks
  results = dict(
      test=test_metrics, best_val=best_epoch['val'], best_epoch=best_epoch['epoch'],
      best_step=best_step, weights=weights, history=loop.history,
      class_names=list(dataset.class_names),
      stopped_early_at_epoch=loop.stopped_early_at_epoch,
      plateau=None if run.plateau is None else dict(metric=run.plateau_metric,
                                                    **loop.plateau_state.to_dict()),
      pretrained=None if parts.pretrained is None else dataclasses.asdict(parts.pretrained),
      loss=run.loss_info, mixup=config.mixup.to_dict() if run.mixup.enabled else None,
      num_params=int(parameter_overview.count_parameters(flat_names(parts.params))),
      num_examples=dict(train=len(dataset.train), val=len(dataset.val), test=len(dataset.test)),
      test_is_val=dataset.test is dataset.val,
      finetune=dict(strategy=config.finetune.strategy, groups=list(plan.groups),
                    phases=[dict(epoch=e, trainable=list(t)) for e, t in plan.phases],
                    lr_multipliers=dict(plan.lr_multipliers),
                    cached_features=dict(used=run.feature_cache is not None,
                                         reason=run.feature_cache_reason)),
      tasks=None if tasks is None else dict(
          mode=config.tasks.mode, names=list(tasks.names), values=[list(v) for v in tasks.values]),
      devices=dict(count=jax.device_count(), kind=jax.devices()[0].device_kind,
                   processes=jax.process_count()),
      timings=_timings(run, loop, total_seconds), config=config.to_dict(),
      config_changes=workdir.recorded_changes(run.workdir))
  if run.is_main:
    (run.workdir / 'results.json').write_text(strict_json(results))
  return results


def strict_json(value, indent: int | None = 2) -> str:
  """JSON that every parser reads: a non-finite float (a NaN metric) becomes null, never the
  `NaN` Python's json writes by default."""
  return json.dumps(_finite_or_null(json.loads(json.dumps(value, default=_jsonable))),
                    indent=indent, allow_nan=False)


def _finite_or_null(value):
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _finite_or_null(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_finite_or_null(v) for v in value]
  return value


def _timings(run, loop, total_seconds: float) -> dict:
  """Seconds in all and in training; images/s without the first (compiling) step."""
  timed_steps = max(loop.step - run.steps_per_epoch * loop.start_epoch - loop.start_in_epoch - 1,
                    0)
  rate = None
  if timed_steps:
    rate = loop.images_seen / max(loop.train_seconds - (loop.first_step_seconds or 0), 1e-9)
  return dict(total_seconds=total_seconds, train_seconds=loop.train_seconds,
              feature_cache_seconds=run.feature_cache.seconds if run.feature_cache else None,
              first_step_seconds=loop.first_step_seconds, train_images_per_second=rate)


def flat_names(tree) -> dict[str, jax.Array]:
  """{'layer1/0/conv1/kernel': array, ...}: the flat mapping clu's overview prints."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_string(path): leaf for path, leaf in leaves}


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
