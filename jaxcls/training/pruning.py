"""The trainer's side of an Optuna sweep: each validation is reported to the run's trial, and
the study's pruner may stop the run there (`jaxcls sweep --search tpe|random|grid`).

A metric writer, beside TensorBoard and the trackers: it sees the `val_*` scalars the loop
writes after each epoch, reports the swept metric with the epoch as Optuna's step, asks the
pruner, and raises `TrialPruned` at the writer's next flush, which the loop calls once the
epoch's checkpoint is saved, so a pruned run keeps every epoch it validated. The trial lives
in the study's storage (SQLite, `ROOT/study.db`); the pruner is rebuilt from what the
sweep wrote into the study (`pruner_from_attrs`), so both processes prune alike.
"""

from absl import logging
from clu.metric_writers import interface

from jaxcls.errors import ConfigError, TrialPruned

PRUNERS = ('median', 'hyperband', 'none')


def make_pruner(name: str, *, startup_trials: int = 2, warmup_epochs: int = 1,
                max_epochs: int = 0):
  """Optuna's MedianPruner (prune below the median of earlier trials at the same epoch, once
  `startup_trials` finished; the first `warmup_epochs` epochs never, since a first epoch's
  validation is noisy: BatchNorm statistics still settling), HyperbandPruner over
  1..max_epochs, or NopPruner."""
  import optuna  # pylint: disable=g-import-not-at-top
  if name == 'median':  # Optuna prunes from step n_warmup_steps on; steps are epochs from 1.
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials,
                                       n_warmup_steps=warmup_epochs + 1)
  if name == 'hyperband':  # max_epochs 0: Optuna estimates it from the first trials.
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs or 'auto')
  if name == 'none':
    return optuna.pruners.NopPruner()
  raise ConfigError(f'pruner {name!r}: one of {", ".join(PRUNERS)}')


def pruner_from_attrs(attrs: dict):
  """The pruner a sweep stored in its study's user attributes ('pruner': {...})."""
  spec = dict(attrs.get('pruner') or {'name': 'none'})
  return make_pruner(spec.pop('name'), **spec)


class PruningWriter(interface.MetricWriter):
  """A clu MetricWriter reporting `metric` (e.g. 'val_accuracy') to trial `number` of the
  study `study` in `storage`; raises TrialPruned at the flush after a pruning decision.
  The last epoch (`num_epochs`) is reported but never pruned: the run is done, and its
  test metrics and value are worth more than the time pruning would save."""

  def __init__(self, storage: str, study: str, number: int, metric: str, num_epochs: int):
    try:
      import optuna  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ConfigError("config.tracking.optuna_storage is set but Optuna is not installed: "
                        "pip install 'jaxcls[optuna]'") from e
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = optuna.load_study(study_name=study, storage=storage)
    loaded.pruner = pruner_from_attrs(loaded.user_attrs)
    trial_id = loaded._storage.get_trial_id_from_study_id_trial_number(  # pylint: disable=protected-access
        loaded._study_id, number)  # pylint: disable=protected-access
    self._trial = optuna.trial.Trial(loaded, trial_id)
    self._metric, self._number, self._num_epochs = metric, number, num_epochs
    self._pruned_at = None

  def write_scalars(self, step, scalars):
    del step
    if self._metric not in scalars or 'epoch' not in scalars:
      return
    epoch, value = int(scalars['epoch']), float(scalars[self._metric])
    self._trial.report(value, epoch)
    if epoch < self._num_epochs and self._trial.should_prune():
      self._pruned_at = (epoch, value)

  def flush(self):
    if self._pruned_at is not None:
      epoch, value = self._pruned_at
      logging.info('trial %d pruned after epoch %d (%s %.4g)', self._number, epoch,
                   self._metric, value)
      raise TrialPruned(f'the sweep pruned trial {self._number} after epoch {epoch}: '
                        f'{self._metric} {value:.4g} is behind the other trials')

  def close(self):
    pass

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass
