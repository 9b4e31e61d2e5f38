"""The main job end to end: `python -m jaxcls.main` trains, logs, checkpoints and resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--config.data.image_size=16', '--config.model.width=4', '--config.train.num_epochs=3',
        '--config.train.batch_size=128', '--config.optimizer.warmup_epochs=0.5',
        '--config.evaluate.report_at_end=False']
STEPS_PER_EPOCH = 1437 // 128  # digits: 1,437 training examples under the 0.8/0.1/0.1 split.


def main_command(workdir, *overrides, config='configs/default.py'):
  return [sys.executable, '-m', 'jaxcls.main', f'--config={config}', f'--workdir={workdir}',
          *overrides]


def run_main(workdir, *overrides, **kwargs):
  result = subprocess.run(main_command(workdir, *overrides), cwd=ROOT, capture_output=True,
                          text=True, timeout=1200, **kwargs)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


def final_params(workdir):
  steps = sorted(int(p.name) for p in (Path(workdir) / 'checkpoints').iterdir() if p.name.isdigit())
  state = ocp.StandardCheckpointer().restore(Path(workdir) / 'checkpoints' / str(steps[-1]) / 'state')
  return steps[-1], state['params']


def test_unknown_override_fails_before_training(tmp_path):
  result = subprocess.run(main_command(tmp_path, '--config.train.nmu_epochs=3'), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert 'nmu_epochs' in result.stderr
  assert not (tmp_path / 'checkpoints').exists()


def test_impossible_value_names_the_field(tmp_path):
  result = subprocess.run(main_command(tmp_path, '--config.train.batch_size=0'), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert 'config.train.batch_size=0: must be positive' in result.stderr
  assert not (tmp_path / 'checkpoints').exists()


def _wait_for(condition, process, timeout=600):
  deadline = time.monotonic() + timeout
  while not condition() and process.poll() is None and time.monotonic() < deadline:
    time.sleep(0.01)
  return condition()


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_result(tmp_path, tiny_run_dir):
  """SIGKILL inside a checkpoint write, SIGKILL at a random moment, SIGTERM: the resumed run
  ends where the uninterrupted one (`tiny_run_dir`, the same config) did."""
  resumed = tmp_path / 'resumed'
  checkpoints = resumed / 'checkpoints'
  args = (*TINY, '--config.train.log_every_steps=5')

  def start():
    return subprocess.Popen(main_command(resumed, *args), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)

  def steps_on_disk():
    return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) \
        if checkpoints.is_dir() else []

  # 1. SIGKILL while Orbax writes a checkpoint (its temporary directory exists).
  process = start()
  writing = lambda: checkpoints.is_dir() and any(  # noqa: E731
      'tmp' in p.name for p in checkpoints.iterdir())
  assert _wait_for(writing, process), 'never caught a checkpoint being written'
  process.kill()
  process.wait()
  # 2. SIGKILL at a random moment after the resumed run has loaded its data (seeded).
  report = resumed / 'data_report.json'
  started = time.time()
  process = start()
  assert _wait_for(lambda: report.stat().st_mtime > started, process)
  time.sleep(np.random.default_rng(0).uniform(0.0, 6.0))
  process.kill()
  process.wait()
  assert not (resumed / 'results.json').exists(), 'the run finished before it could be killed'
  # 3. SIGTERM as the next epoch's checkpoint starts to be written (Orbax writes it while the
  # next epoch trains): checkpoint the current step, exit 143. Waiting for the finished
  # checkpoint instead let a loaded machine's signal land on the epoch's last step (an epoch
  # of this run takes about a second), which checkpoints at the boundary; should that still
  # happen, the next start tries again, while epochs are left.
  def latest_started(since):  # A checkpoint counts from its temporary directory on.
    steps = [0]
    for path in checkpoints.iterdir() if checkpoints.is_dir() else ():
      step = path.name.split('.')[0]
      try:  # Orbax renames the temporary directory when it finishes.
        if step.isdigit() and path.stat().st_mtime > since:
          steps.append(int(step))
      except FileNotFoundError:
        pass
    return max(steps)

  for delay in (0.1, 0.3, 0.0):
    before, started = max(steps_on_disk(), default=0), time.time()
    process = start()
    assert _wait_for(lambda: latest_started(started) > before, process)
    time.sleep(delay)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert 'SIGTERM received: stopped after step' in stderr
    if max(steps_on_disk()) % STEPS_PER_EPOCH or max(steps_on_disk()) >= 2 * STEPS_PER_EPOCH:
      break
  assert max(steps_on_disk()) % STEPS_PER_EPOCH != 0, 'expected a mid-epoch checkpoint'

  log = run_main(resumed, *args).stderr
  assert 'resumed from the checkpoint at step' in log
  expected = json.loads((tiny_run_dir / 'results.json').read_text())
  actual = json.loads((resumed / 'results.json').read_text())
  assert [h['epoch'] for h in actual['history']] == [1, 2, 3]
  for want, got in zip(expected['history'], actual['history']):
    for name, value in want['val'].items():
      np.testing.assert_allclose(got['val'][name], value, rtol=1e-4, atol=1e-6)
    # The preempted epoch's train metrics cover all its steps, before and after the signal.
    for name, value in want['train'].items():
      np.testing.assert_allclose(got['train'][name], value, rtol=1e-4, atol=1e-6,
                                 err_msg=f'epoch {want["epoch"]} train {name}')
  for name, value in expected['test'].items():
    np.testing.assert_allclose(actual['test'][name], value, rtol=1e-4, atol=1e-6)
  (step_a, params_a), (step_b, params_b) = final_params(tiny_run_dir), final_params(resumed)
  assert step_a == step_b == 3 * STEPS_PER_EPOCH
  flat_a, flat_b = ocp.tree.to_flat_dict(params_a), ocp.tree.to_flat_dict(params_b)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_allclose(flat_b[key], flat_a[key], rtol=1e-4, atol=1e-5, err_msg=str(key))


@pytest.mark.slow
def test_default_config_reaches_95_percent_on_digits(tmp_path):
  result = run_main(tmp_path)
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['test']['accuracy'] >= 0.95, results['test']
  assert results['num_examples'] == {'train': 1437, 'val': 180, 'test': 180}
  assert len(results['history']) == 15
  assert 'epoch 15/15' in result.stderr
  assert list(tmp_path.glob('events.out.tfevents.*')), 'no TensorBoard event file'
  assert (tmp_path / 'checkpoints' / str(results['best_step'])).is_dir()
  assert 'test accuracy' in result.stdout
  # A console a person reads: a line per epoch and a few about the run, no library chatter;
  # the config and the parameter table are files in the workdir.
  lines = result.stderr.splitlines()
  assert len(lines) <= 40, '\n'.join(lines)
  assert sum('epoch ' in line and '/15: train loss' in line for line in lines) == 15
  for chatter in ('libtpu', 'oneDNN', 'logging_writer', 'Hyperparameters', 'orbax'):
    assert chatter not in result.stderr, chatter
  assert f'68,786 parameters (the table: {tmp_path}/parameters.txt)' in result.stderr
  assert 'Total: 68,786' in (tmp_path / 'parameters.txt').read_text()
  for name in ('classification_report.md', 'classification_report.json', 'confusion_matrix.png',
               'confusion_matrix.csv', 'curves.png', 'misclassified.png', 'gradcam.png'):
    assert (tmp_path / 'report' / name).is_file(), name


def test_verbosity_shows_the_config_and_the_libraries(tmp_path):
  result = run_main(tmp_path, *TINY, '--config.train.num_epochs=1', '--verbosity=1')
  assert 'config:\ncheckpoint:' in result.stderr  # The whole config, as before.
  assert 'Total: ' in result.stderr  # The parameter table.
  assert 'logging_writer' in result.stderr  # And every library's lines.


def test_profile_steps_leave_a_tensorboard_trace(tiny_config, tmp_path):
  from jaxcls.experiment import train_and_evaluate  # pylint: disable=g-import-not-at-top
  tiny_config.train.num_epochs, tiny_config.data.epoch_examples = 1, 640
  tiny_config.train.profile_steps = 2
  train_and_evaluate(tiny_config, str(tmp_path))
  traces = list((tmp_path / 'plugins' / 'profile').glob('*/*.xplane.pb'))
  assert len(traces) == 1 and traces[0].stat().st_size > 0, traces
