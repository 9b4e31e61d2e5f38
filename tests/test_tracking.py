"""MLflow and wandb as metric writers: real clients, local stores, no network."""

import json
import sys

import pytest

from jaxcls.config import validate
from jaxcls.errors import ConfigError
from jaxcls.experiment import train_and_evaluate, train_and_report
from jaxcls.training import tracking

mlflow = pytest.importorskip('mlflow')


@pytest.fixture
def file_store_allowed(monkeypatch):
  """The writer opts in to MLflow's file store; this puts the environment back afterwards."""
  monkeypatch.setenv('MLFLOW_ALLOW_FILE_STORE', 'true')
  monkeypatch.delenv('MLFLOW_ALLOW_FILE_STORE')


def _mlflow_run(uri, workdir):
  client = mlflow.tracking.MlflowClient(uri)
  run_id = json.loads((workdir / tracking.TRACKING_FILE).read_text())['mlflow']['run_id']
  return client, client.get_run(run_id)


def _artifacts(client, run_id, path=None) -> set[str]:
  found = set()
  for info in client.list_artifacts(run_id, path):
    found |= _artifacts(client, run_id, info.path) if info.is_dir else {info.path}
  return found


@pytest.mark.parametrize('store', ['file', 'sqlite'])
def test_mlflow_run_holds_params_val_metrics_results_and_confusion_matrix(
    store, tiny_config, tmp_path, file_store_allowed):
  uri = f'file:{tmp_path}/mlruns' if store == 'file' else f'sqlite:///{tmp_path}/mlflow.db'
  tiny_config.train.num_epochs = 2
  tiny_config.evaluate.report_at_end = True
  tiny_config.tracking.backends = ('tensorboard', 'mlflow')
  tiny_config.tracking.mlflow_tracking_uri = uri
  workdir = tmp_path / 'digits_run'
  train_and_report(tiny_config, str(workdir))
  client, run = _mlflow_run(uri, workdir)
  assert run.info.run_name == 'digits_run'
  assert run.info.status == 'FINISHED'
  assert client.get_experiment(run.info.experiment_id).name == 'jaxcls'
  params = run.data.params
  assert params['train.num_epochs'] == '2'
  assert params['tracking.backends'] == "['tensorboard', 'mlflow']"
  assert params['data.split'] == '[0.8, 0.1, 0.1]'
  val = client.get_metric_history(run.info.run_id, 'val_accuracy')
  history = json.loads((workdir / 'results.json').read_text())['history']
  assert [(m.step, m.value) for m in val] == [(h['step'], h['val']['accuracy']) for h in history]
  assert len(client.get_metric_history(run.info.run_id, 'train_loss')) >= 2
  assert 'test_accuracy' in run.data.metrics
  artifacts = _artifacts(client, run.info.run_id)
  assert {'results.json', 'config.json', 'report/confusion_matrix.png',
          'report/confusion_matrix.csv', 'report/classification_report.json'} <= artifacts
  assert any(a.startswith('images/train/first_batch/') for a in artifacts)
  assert list(workdir.glob('events.out.tfevents.*'))  # TensorBoard as well.


def test_a_resumed_run_continues_the_same_mlflow_run(tiny_config, tmp_path):
  uri = f'sqlite:///{tmp_path}/mlflow.db'
  tiny_config.train.num_epochs = 1
  tiny_config.tracking.backends = ('mlflow',)
  tiny_config.tracking.mlflow_tracking_uri = uri
  workdir = tmp_path / 'run'
  train_and_report(tiny_config, str(workdir))
  _, first = _mlflow_run(uri, workdir)
  tiny_config.train.num_epochs = 2
  train_and_report(tiny_config, str(workdir), allow_config_change=True)
  client, run = _mlflow_run(uri, workdir)
  assert run.info.run_id == first.info.run_id
  assert len(client.search_runs([run.info.experiment_id])) == 1
  val_steps = [m.step for m in client.get_metric_history(run.info.run_id, 'val_accuracy')]
  assert len(val_steps) == 2 and val_steps[0] < val_steps[1]
  assert run.data.params['train.num_epochs'] == '1'  # Logged once; the change is in results.json.
  assert not list(workdir.glob('events.out.tfevents.*'))  # TensorBoard was not chosen.


def test_mlflow_defaults_to_sqlite_beside_the_workdir(tmp_path, monkeypatch, tiny_config):
  monkeypatch.delenv('MLFLOW_TRACKING_URI', raising=False)
  assert (tracking.mlflow_tracking_uri(tiny_config.tracking, tmp_path / 'run')
          == f'sqlite:///{tmp_path}/mlflow.db')
  monkeypatch.setenv('MLFLOW_TRACKING_URI', 'http://tracking:5000')
  assert tracking.mlflow_tracking_uri(tiny_config.tracking, tmp_path / 'run') == (
      'http://tracking:5000')


def _wandb_records(path):
  """The records of an offline run's transaction log (run-ID.wandb: LevelDB's log format,
  32 KiB blocks, after a 7-byte W&B header), which `wandb sync` uploads."""
  import struct  # pylint: disable=g-import-not-at-top
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  data, block, position, pending = path.read_bytes(), 32768, 7, b''
  assert data[:4] == b':W&B'
  while position + 7 <= len(data):
    if block - position % block < 7:  # A block's tail too short for a header is padding.
      position += block - position % block
      continue
    length, kind = struct.unpack('<HB', data[position + 4:position + 7])
    chunk, position = data[position + 7:position + 7 + length], position + 7 + length
    if kind == 0:
      break
    pending = chunk if kind in (1, 2) else pending + chunk  # FULL/FIRST, MIDDLE/LAST.
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      yield record


def test_wandb_offline_run_directory_has_the_metrics_and_config(tiny_config, tmp_path,
                                                                monkeypatch):
  pytest.importorskip('wandb')
  home = tmp_path / 'wandb_home'
  for name in ('WANDB_DIR', 'WANDB_CACHE_DIR', 'WANDB_CONFIG_DIR', 'WANDB_DATA_DIR'):
    (home / name.lower()).mkdir(parents=True)
    monkeypatch.setenv(name, str(home / name.lower()))
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_SILENT', 'true')
  tiny_config.train.num_epochs = 1
  tiny_config.tracking.backends = ('wandb',)
  workdir = tmp_path / 'run'
  results = train_and_report(tiny_config, str(workdir))
  run_id = json.loads((workdir / tracking.TRACKING_FILE).read_text())['wandb']['run_id']
  # Training, then the files after it: two offline sessions of the same run.
  training, files = sorted((home / 'wandb_dir' / 'wandb').glob(f'offline-run-*-{run_id}'))
  records = list(_wandb_records(training / f'run-{run_id}.wandb'))
  run = next(r.run for r in records if r.HasField('run'))
  assert (run.run_id, run.display_name) == (run_id, 'run')
  config = {u.key: json.loads(u.value_json) for u in run.config.update}
  assert config['train.num_epochs'] == 1 and config['optimizer.learning_rate'] == 0.1
  history = [{i.key or '/'.join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
             for r in records if r.HasField('history')]
  val = [(h['_step'], h['val_accuracy']) for h in history if 'val_accuracy' in h]
  assert val == [(e['step'], pytest.approx(e['val']['accuracy'])) for e in results['history']]
  assert any('train_loss' in h for h in history)
  artifact = next(r.artifact for r in _wandb_records(files / f'run-{run_id}.wandb')
                  if r.HasField('artifact'))
  assert artifact.type == 'results'
  assert {'results.json', 'config.json'} <= {e.path for e in artifact.manifest.contents}


def test_a_missing_tracker_package_names_the_extra(tiny_config, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'mlflow', None)  # `import mlflow` raises ImportError.
  tiny_config.tracking.backends = ('tensorboard', 'mlflow')
  with pytest.raises(ConfigError, match=r"pip install 'jaxcls\[mlflow\]'"):
    train_and_evaluate(tiny_config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()  # Stopped before the workdir was made.


def test_an_unknown_backend_is_one_line_naming_it_and_the_known_ones(config):
  config.tracking.backends = ('tensorboard', 'mlfow')
  with pytest.raises(ConfigError) as error:
    validate(config)
  problems = str(error.value).splitlines()[1:]
  assert problems == ["  config.tracking.backends=('tensorboard', 'mlfow'): unknown backend "
                      "'mlfow'; known: 'tensorboard', 'mlflow' or 'wandb'"]
