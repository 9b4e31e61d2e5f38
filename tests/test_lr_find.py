"""The learning-rate range test (`jaxcls lr-find`): a sensible suggestion on the default config,
the run's fine-tuning strategy respected, nothing kept, bad flags told in one line."""

import json
import subprocess
import sys

import jax
import numpy as np

from jaxcls.config import apply_overrides, default_config
from jaxcls.experiment import LR_FIND_JSON, LR_FIND_PNG, find_learning_rate
from jaxcls.training import loop

# The default config (narrow ResNet-20, SGD with momentum, digits), 16x16 and width 4: seconds.
TINY = {'data.image_size': 16, 'model.width': 4}


def _config(**overrides):
  return apply_overrides(default_config(), {**TINY, **overrides})


def test_default_config_gets_a_sensible_rate_and_the_sweep_brackets_the_divergence(tmp_path):
  test = find_learning_rate(_config(), str(tmp_path), start_lr=1e-5, end_lr=100.0,
                            num_steps=120)
  assert 1e-4 < test.suggestion < 1, test.suggestions
  assert test.rule == 'steepest' and set(test.suggestions) == {'steepest', 'minimum'}
  rates = np.asarray(test.learning_rates)
  assert rates[0] == np.float32(1e-5) and np.all(np.diff(rates) > 0)
  best = min(test.smoothed_losses)
  # The sweep went past the good rates into divergence: stopped there, or ended far above.
  assert 'x the best' in test.stopped or 'non-finite' in test.stopped or (
      test.losses[-1] > 2 * best), test.stopped
  written = json.loads((tmp_path / LR_FIND_JSON).read_text())
  assert written['suggestion'] == test.suggestion and written['rule'] == 'steepest'
  assert len(written['learning_rates']) == len(written['losses']) == len(test.losses)
  assert (tmp_path / LR_FIND_PNG).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_feature_extraction_leaves_frozen_groups_as_they_were_and_keeps_no_checkpoint(
    tmp_path, monkeypatch):
  """Every step of the sweep is recorded: the head moves, the backbone's weights and BatchNorm
  statistics do not."""
  seen = {}
  first_phase = loop.Training.first_phase

  def recording_first_phase(self, seed):
    state, phase, train_fn, eval_fn = first_phase(self, seed)
    seen['labels'] = self.parts.labels()
    seen['before'] = jax.device_get((state.params, state.model_state))

    def train(state, batch):
      state, metrics = train_fn(state, batch)
      seen['after'] = jax.device_get((state.params, state.model_state))  # Before it is donated.
      return state, metrics

    return state, phase, train, eval_fn

  monkeypatch.setattr(loop.Training, 'first_phase', recording_first_phase)
  test = find_learning_rate(_config(**{'finetune.strategy': 'feature_extraction'}),
                            str(tmp_path), start_lr=1e-3, end_lr=10.0, num_steps=20)
  assert len(test.losses) >= 2
  (params_before, stats_before), (params_after, stats_after) = seen['before'], seen['after']
  moved = jax.tree.map(lambda group, a, b: (group, not np.array_equal(a, b)),
                       seen['labels'], params_before, params_after)
  moved = jax.tree.leaves(moved, is_leaf=lambda x: isinstance(x, tuple))
  assert {group for group, changed in moved if changed} == {'head'}
  assert {group for group, _ in moved} >= {'stem', 'stage1', 'head'}
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(stats_before),
                                                  jax.tree.leaves(stats_after)))
  written = {p.name for p in tmp_path.iterdir()}
  assert {LR_FIND_JSON, LR_FIND_PNG} <= written and 'checkpoints' not in written


def test_a_start_rate_not_below_the_end_rate_ends_in_one_line_naming_it(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'jaxcls', 'lr-find', '--config', 'default.py', '--workdir',
       str(tmp_path / 'run'), '--start_lr=1', '--end_lr=0.1'],
      cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1] == (
      'jaxcls lr-find: --end_lr=0.1: must be larger than start_lr=1')
  assert 'Traceback' not in out.stderr and not (tmp_path / 'run').exists()


def test_a_short_sweep_is_smoothed_less_so_its_average_follows_the_loss():
  from jaxcls.training.lr_find import centred, default_smoothing  # pylint: disable=g-import-not-at-top
  assert default_smoothing(200) == default_smoothing(1000) == 0.95
  assert default_smoothing(60) < 0.9 and default_smoothing(10) == 0.0
  # A loss that drops from 1 to 0 halfway through 60 steps: the average at the ends keeps
  # within 0.1 of the loss with the short sweep's smoothing, not with 0.95.
  losses = [1.0] * 30 + [0.0] * 30
  short = centred(losses, default_smoothing(60))
  assert abs(short[0] - 1) < 0.1 and abs(short[-1]) < 0.1
  assert abs(centred(losses, 0.95)[-1]) > 0.1
