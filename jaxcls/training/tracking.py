"""Experiment trackers as metric writers: TensorBoard, MLflow and Weights & Biases.

`config.tracking.backends` chooses them, several at once; `create_writers`
builds the run's writers (the one place a new kind of writer joins) and
`create_writer` combines them behind clu's `MultiWriter`, so the loop writes
once. MLflow and wandb implement clu's `MetricWriter` interface on top of
their own clients, are imported only when chosen (the optional extras
`jaxcls[mlflow]`, `jaxcls[wandb]`) and live on process 0 alone.

A tracked run is as resumable as the training: the first run of a workdir
stores its MLflow and wandb run ids in WORKDIR/tracking.json, and a rerun
continues those runs. After training, `log_finished_run` reopens them and
adds results.json, config.json and the report (WORKDIR/report/) as files.
"""

import importlib
import json
import os
import time
from pathlib import Path

import ml_collections
import numpy as np
from absl import logging

from jaxcls.errors import ConfigError, ConfigProblems, either
from jaxcls.training import progress, pruning

BACKENDS = ('tensorboard', 'mlflow', 'wandb')
TRACKING_FILE = 'tracking.json'  # {'mlflow': {'tracking_uri', 'run_id'}, 'wandb': {...}}
_DEFAULT_BACKENDS = ('tensorboard',)  # For configs saved before config.tracking existed.


def config_errors(tracking_config: ml_collections.ConfigDict) -> list[str]:
  """What is wrong with `config.tracking`."""
  c, p = tracking_config, ConfigProblems('tracking', tracking_config)
  backends = _backends(c)
  unknown = [b for b in backends if b not in BACKENDS]
  p.check(not unknown, 'backends', f'unknown backend {", ".join(map(repr, unknown))}; '
          f'known: {either(BACKENDS)}')
  p.check(len(set(backends)) == len(backends), 'backends', 'names a backend twice')
  p.check(bool(c.mlflow_experiment), 'mlflow_experiment', 'must not be empty')
  return p


def require_packages(tracking_config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the extra to install for a chosen tracker that is missing."""
  for backend in _backends(tracking_config):
    if backend != 'tensorboard':
      _import(backend)


def create_writer(config: ml_collections.ConfigDict, workdir: str | Path, *,
                  is_main_process: bool):
  """The run's metric writer: `create_writers` behind one clu `MultiWriter`."""
  writers = create_writers(config, Path(workdir), is_main_process=is_main_process)
  if len(writers) == 1:
    return writers[0]
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError:  # No TensorFlow: the console fallback beside the trackers.
    return _Writers(writers)
  return metric_writers.MultiWriter(writers)


def create_writers(config: ml_collections.ConfigDict, workdir: Path, *,
                   is_main_process: bool) -> list:
  """Every metric writer of the run, in `config.tracking.backends` order.

  The first always logs to the console, with TensorBoard events in `workdir`
  when 'tensorboard' is chosen and this is the main process (other processes
  log only). MLflow and wandb writers join on the main process.
  """
  backends = _backends(config.get('tracking'))
  unknown = [b for b in backends if b not in BACKENDS]
  if unknown:
    raise ConfigError(f'config.tracking.backends={config.tracking.backends!r}: unknown backend '
                      f'{", ".join(map(repr, unknown))}; known: {either(BACKENDS)}')
  # `is_main_process=False` is clu's console-only writer.
  writers = [progress.create_writer(
      str(workdir), is_main_process=is_main_process and 'tensorboard' in backends)]
  if not is_main_process:
    return writers
  for backend in backends:
    if backend == 'mlflow':
      writers.append(MlflowWriter(config, workdir))
    elif backend == 'wandb':
      writers.append(WandbWriter(config, workdir))
  tracking = config.get('tracking')
  if tracking is not None and tracking.get('optuna_storage'):
    # Last: its flush raises TrialPruned once the others have flushed.
    writers.append(pruning.PruningWriter(tracking.optuna_storage, tracking.optuna_study,
                                         tracking.optuna_trial, tracking.optuna_metric,
                                         config.train.num_epochs))
  return writers


def log_finished_run(config: ml_collections.ConfigDict, workdir: str | Path) -> None:
  """Adds results.json, config.json and WORKDIR/report/ to the run's MLflow and wandb runs.

  Called on the main process after the report is written; reopens the runs
  stored in WORKDIR/tracking.json. A tracker that cannot be reached is logged,
  not raised: the run's results are on disk either way.
  """
  workdir = Path(workdir)
  files = [workdir / name for name in ('results.json', 'config.json')
           if (workdir / name).is_file()]
  report = workdir / 'report'
  if report.is_dir():
    files += sorted(p for p in report.rglob('*') if p.is_file())
  for backend in _backends(config.get('tracking')):
    if backend == 'tensorboard':
      continue  # The report's figures are already TensorBoard images (jaxcls.evaluation).
    try:
      writer = (MlflowWriter if backend == 'mlflow' else WandbWriter)(config, workdir,
                                                                     reopen_only=True)
    except LookupError as e:
      logging.warning('%s: %s', backend, e)
      continue
    except Exception as e:  # pylint: disable=broad-except
      logging.error('%s: could not reopen the run of %s: %s', backend, workdir, e)
      continue
    try:
      writer.log_files(workdir, files)
      logging.info('%s: logged %d files of %s', backend, len(files), workdir)
    except Exception as e:  # pylint: disable=broad-except
      logging.error('%s: could not log the results and report of %s: %s', backend, workdir, e)
    finally:
      writer.close()


def flat_config(config: ml_collections.ConfigDict) -> dict:
  """{'optimizer.learning_rate': 0.1, ...}: the config's leaves under dotted names."""
  flat = {}

  def walk(tree, prefix):
    for key, value in tree.items():
      if isinstance(value, dict):
        walk(value, f'{prefix}{key}.')
      else:
        flat[f'{prefix}{key}'] = value

  walk(json.loads(config.to_json_best_effort()), '')
  return flat


def run_name(config: ml_collections.ConfigDict, workdir: Path) -> str:
  name = config.get('tracking', {}).get('run_name', '')
  return name or Path(workdir).resolve().name


def mlflow_tracking_uri(tracking_config, workdir: Path) -> str:
  """`mlflow_tracking_uri`, else $MLFLOW_TRACKING_URI, else SQLite beside the workdir.

  sqlite:///WORKDIR/../mlflow.db: the runs of one folder (a sweep's) share a store.
  """
  uri = tracking_config.get('mlflow_tracking_uri') if tracking_config else None
  if uri:
    return uri
  if os.environ.get('MLFLOW_TRACKING_URI'):
    return os.environ['MLFLOW_TRACKING_URI']
  return f'sqlite:///{Path(workdir).resolve().parent / "mlflow.db"}'


class _TrackerWriter:
  """clu's MetricWriter interface; what a tracker has no use for does nothing."""

  def write_summaries(self, step, values, metadata=None) -> None:
    pass

  def write_histograms(self, step, arrays, num_buckets=None) -> None:
    pass

  def write_videos(self, step, videos) -> None:
    pass

  def write_audios(self, step, audios, *, sample_rate) -> None:
    pass

  def write_hparams(self, hparams) -> None:
    pass  # The whole config went in as the run's parameters when it was opened.

  def flush(self) -> None:
    pass


class MlflowWriter(_TrackerWriter):
  """An MLflow run (through `MlflowClient`, no global active run) named after the workdir.

  Parameters: the flat config, values as strings cut to MLflow's length limit.
  A stored run id (WORKDIR/tracking.json) for the same tracking URI is reopened;
  `reopen_only` raises LookupError instead of creating a run.
  """

  def __init__(self, config, workdir: Path, *, reopen_only: bool = False):
    mlflow = _import('mlflow')
    from mlflow.entities import Metric, Param  # pylint: disable=g-import-not-at-top
    from mlflow.utils import validation  # pylint: disable=g-import-not-at-top
    self._metric_cls = Metric
    tracking = config.get('tracking')
    uri = mlflow_tracking_uri(tracking, workdir)
    if uri.startswith('file:') or '://' not in uri:
      # MLflow 3 opens a file store only when asked to; naming one in the config is asking.
      os.environ.setdefault('MLFLOW_ALLOW_FILE_STORE', 'true')
    self._client = mlflow.tracking.MlflowClient(uri)
    stored = _stored(workdir).get('mlflow', {})
    self.run_id = stored.get('run_id') if stored.get('tracking_uri') == uri else None
    if self.run_id is not None:
      try:
        self._client.get_run(self.run_id)
      except mlflow.exceptions.MlflowException:
        logging.warning('mlflow: run %s of %s is not in %s: starting a new run', self.run_id,
                        workdir / TRACKING_FILE, uri)
        self.run_id = None
    if self.run_id is None and reopen_only:
      raise LookupError(f'no MLflow run of {workdir} in {uri}')
    resumed = self.run_id is not None
    if resumed:
      self._client.update_run(self.run_id, status='RUNNING')
    else:
      self.run_id = self._create_run(config, workdir, uri)
      _store(workdir, 'mlflow', dict(tracking_uri=uri, run_id=self.run_id))
    if reopen_only:
      return
    logged = self._client.get_run(self.run_id).data.params if resumed else {}
    limit = validation.MAX_PARAM_VAL_LENGTH
    params = [Param(key, _cut(str(value), limit)) for key, value in flat_config(config).items()
              if key not in logged and len(key) <= validation.MAX_ENTITY_KEY_LENGTH]
    batch = validation.MAX_PARAMS_TAGS_PER_BATCH
    for start in range(0, len(params), batch):
      self._client.log_batch(self.run_id, params=params[start:start + batch])
    logging.info('mlflow: %s run %s (%s) in %s', 'resuming' if resumed else 'started',
                 self.run_id, run_name(config, workdir), uri)

  def _create_run(self, config, workdir: Path, uri: str) -> str:
    name = config.tracking.mlflow_experiment if config.get('tracking') else 'jaxcls'
    experiment = self._client.get_experiment_by_name(name)
    if experiment is not None:
      experiment_id = experiment.experiment_id
    else:
      artifacts = None
      if uri.startswith('sqlite:///'):  # Beside the database, not in the current directory.
        artifacts = (Path(uri[len('sqlite:///'):]).resolve().parent / 'mlartifacts').as_uri()
      experiment_id = self._client.create_experiment(name, artifact_location=artifacts)
    run = self._client.create_run(experiment_id, run_name=run_name(config, workdir),
                                  tags={'jaxcls.workdir': str(Path(workdir).resolve())})
    return run.info.run_id

  def write_scalars(self, step: int, scalars) -> None:
    now = int(time.time() * 1000)
    self._client.log_batch(self.run_id, metrics=[
        self._metric_cls(key, float(value), now, int(step)) for key, value in scalars.items()])

  def write_images(self, step: int, images) -> None:
    for key, batch in images.items():
      for i, image in enumerate(np.asarray(batch)):
        suffix = f'_{i}' if len(batch) > 1 else ''
        self._client.log_image(self.run_id, _uint8(image),
                               artifact_file=f'images/{key}/step_{step}{suffix}.png')

  def write_texts(self, step: int, texts) -> None:
    for key, text in texts.items():
      self._client.log_text(self.run_id, str(text), f'texts/{key}/step_{step}.txt')

  def log_files(self, workdir: Path, files: list[Path]) -> None:
    for path in files:
      folder = path.parent.relative_to(workdir).as_posix()
      self._client.log_artifact(self.run_id, str(path), None if folder == '.' else folder)

  def close(self) -> None:
    self._client.set_terminated(self.run_id, 'FINISHED')


class WandbWriter(_TrackerWriter):
  """A wandb run in WORKDIR/wandb/ (or $WANDB_DIR) named after the workdir.

  `WANDB_MODE=offline` keeps it on disk with no account (`wandb sync` uploads it
  later). The config: the flat config; the finished run's files: an artifact of
  type 'results'. A stored run id is resumed (`resume='allow'`); `reopen_only`
  raises LookupError when there is none.
  """

  def __init__(self, config, workdir: Path, *, reopen_only: bool = False):
    self._wandb = wandb = _import('wandb')
    tracking = config.get('tracking') or {}
    run_id = _stored(workdir).get('wandb', {}).get('run_id')
    if run_id is None and reopen_only:
      raise LookupError(f'no wandb run of {workdir} in {workdir / TRACKING_FILE}')
    self._run = wandb.init(
        project=tracking.get('wandb_project') or 'jaxcls', entity=tracking.get('wandb_entity'),
        dir=None if os.environ.get('WANDB_DIR') else str(workdir), name=run_name(config, workdir),
        id=run_id, resume='allow', config=None if reopen_only else flat_config(config),
        allow_val_change=True, reinit='create_new')
    if run_id is None:
      _store(workdir, 'wandb', dict(run_id=self._run.id, project=self._run.project))
    logging.info('wandb: %s run %s (%s) in %s', 'resuming' if run_id else 'started',
                 self._run.id, self._run.name, self._run.dir)

  def write_scalars(self, step: int, scalars) -> None:
    self._run.log({key: float(value) for key, value in scalars.items()}, step=int(step))

  def write_images(self, step: int, images) -> None:
    self._run.log({key: [self._wandb.Image(_uint8(image)) for image in np.asarray(batch)]
                   for key, batch in images.items()}, step=int(step))

  def write_texts(self, step: int, texts) -> None:
    self._run.log({key: self._wandb.Html(f'<pre>{text}</pre>') for key, text in texts.items()},
                  step=int(step))

  def log_files(self, workdir: Path, files: list[Path]) -> None:
    artifact = self._wandb.Artifact(f'run-{self._run.id}-results', type='results')
    for path in files:  # As one versioned artifact: a rerun's files are its next version.
      artifact.add_file(str(path), name=path.relative_to(workdir).as_posix())
    self._run.log_artifact(artifact)
    figures = {f'report/{p.stem}': self._wandb.Image(str(p)) for p in files
               if p.suffix == '.png' and p.parent == workdir / 'report'}
    if figures:
      self._run.log(figures)

  def close(self) -> None:
    self._run.finish()


class _Writers:
  """MultiWriter's job where clu's writers do not import (no TensorFlow)."""

  def __init__(self, writers):
    self._writers = writers

  def __getattr__(self, name):
    def each(*args, **kwargs):
      for writer in self._writers:
        if hasattr(writer, name):
          getattr(writer, name)(*args, **kwargs)
    return each


def _backends(tracking_config) -> tuple[str, ...]:
  """The chosen backends; 'tensorboard,mlflow' in one item (`--config.tracking.backends=
  tensorboard,mlflow` on the command line) counts as two."""
  if not tracking_config:
    return _DEFAULT_BACKENDS
  return tuple(name.strip() for item in tracking_config.backends for name in str(item).split(',')
               if name.strip())


def _import(name: str):
  try:
    return importlib.import_module(name)
  except ImportError as e:
    raise ConfigError(f"config.tracking.backends names {name!r}, which is not installed "
                      f"({e}): pip install 'jaxcls[{name}]'") from e


def _stored(workdir: Path) -> dict:
  path = Path(workdir) / TRACKING_FILE
  return json.loads(path.read_text()) if path.is_file() else {}


def _store(workdir: Path, backend: str, ids: dict) -> None:
  stored = _stored(workdir)
  stored[backend] = ids
  (Path(workdir) / TRACKING_FILE).write_text(json.dumps(stored, indent=2) + '\n')


def _cut(value: str, limit: int) -> str:
  return value if len(value) <= limit else value[:limit - 3] + '...'


def _uint8(image) -> np.ndarray:
  """A [H, W, C] image as uint8, from [0, 1] floats or integers."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image
  if np.issubdtype(image.dtype, np.floating) and image.max(initial=0) <= 1.0:
    image = image * 255
  return np.clip(image, 0, 255).astype(np.uint8)
