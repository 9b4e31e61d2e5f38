"""Specification of the multi-host path: two CPU processes on jax.distributed train like one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# Digits at 16x16, 2 steps of a global batch of 128, one epoch.
TINY = ['--config.data.image_size=16', '--config.model.width=4', '--config.train.num_epochs=1',
        '--config.train.batch_size=128', '--config.optimizer.warmup_epochs=0',
        '--config.data.epoch_examples=256', '--config.train.log_every_steps=1',
        # Host-side crop offsets are drawn per process; this compares the reductions alone.
        '--config.data.augment.random_crop_padding=0', '--config.optimizer.learning_rate=0.01',
        '--config.evaluate.report_at_end=False']


def _final_params(workdir: Path) -> dict[str, np.ndarray]:
  """The parameters of the run's last checkpoint, as host arrays (whatever devices saved them)."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  step = max(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  path = workdir / 'checkpoints' / str(step) / 'state'
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path)
  tree = getattr(getattr(tree, 'item_metadata', tree), 'tree', tree)
  state = checkpointer.restore(path, restore_args=jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(state['params'])[0]}


@pytest.mark.slow
def test_two_cpu_processes_train_like_one_with_the_same_global_batch(tmp_path):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'jax_cache'),
             JAX_PLATFORMS='cpu', PYTHON=sys.executable)
  two, one = tmp_path / 'two_processes', tmp_path / 'one_process'
  args = ['--config', str(REPO / 'configs' / 'default.py')] + TINY
  launched = subprocess.run(
      ['bash', str(REPO / 'launch' / 'multihost_local.sh'), '2', *args, '--workdir', str(two)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert launched.returncode == 0, launched.stderr[-3000:]
  results = json.loads((two / 'results.json').read_text())
  assert results['devices']['processes'] == 2 and results['devices']['count'] == 2
  assert 'process 1 of 2' in (two / 'process_1.log').read_text()

  single = subprocess.run([sys.executable, '-m', 'jaxcls.main', *args, '--workdir', str(one)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert single.returncode == 0, single.stderr[-3000:]
  reference = json.loads((one / 'results.json').read_text())
  assert reference['devices']['processes'] == 1
  two_params, one_params = _final_params(two), _final_params(one)
  assert two_params.keys() == one_params.keys()
  # The same batches give the same losses; two devices sum gradients in another order, and
  # BatchNorm over 4 narrow channels amplifies that float noise a little.
  np.testing.assert_allclose(results['history'][0]['train']['loss'],
                             reference['history'][0]['train']['loss'], rtol=1e-5)
  for name in one_params:
    np.testing.assert_allclose(two_params[name], one_params[name], rtol=1e-3, atol=1e-3,
                               err_msg=name)
