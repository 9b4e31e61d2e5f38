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
        '--config.train.batch_size=128', '--config.optimizer.warmup_epochs=0.5']
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


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
  reference, resumed = tmp_path / 'reference', tmp_path / 'resumed'
  run_main(reference, *TINY)

  # Kill -9 as soon as the first epoch's checkpoint is complete (Orbax renames the
  # temporary directory to the bare step number only when the write has finished).
  process = subprocess.Popen(main_command(resumed, *TINY), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  first_checkpoint = resumed / 'checkpoints' / str(STEPS_PER_EPOCH)
  deadline = time.monotonic() + 600
  while not first_checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert first_checkpoint.exists()
  assert not (resumed / 'results.json').exists(), 'the run finished before it could be killed'

  log = run_main(resumed, *TINY).stderr
  assert 'resumed from the checkpoint at step' in log

  expected = json.loads((reference / 'results.json').read_text())
  actual = json.loads((resumed / 'results.json').read_text())
  assert [h['epoch'] for h in actual['history']] == [1, 2, 3]
  for want, got in zip(expected['history'], actual['history']):
    for split in ('train', 'val'):
      for name, value in want[split].items():
        np.testing.assert_allclose(got[split][name], value, rtol=1e-4, atol=1e-6)
  for name, value in expected['test'].items():
    np.testing.assert_allclose(actual['test'][name], value, rtol=1e-4, atol=1e-6)
  (step_a, params_a), (step_b, params_b) = final_params(reference), final_params(resumed)
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
  for name in ('classification_report.md', 'classification_report.json', 'confusion_matrix.png',
               'confusion_matrix.csv', 'curves.png', 'misclassified.png', 'gradcam.png'):
    assert (tmp_path / 'report' / name).is_file(), name
