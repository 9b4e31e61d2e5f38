"""The weights' exponential moving average (train.ema_decay): the step's update, a real run's
validation of both weights, the checkpoint's choice, resuming and reopening."""

import json

import jax
import numpy as np
import optax
import pytest

from jaxcls.config import ConfigError, validate
from jaxcls.models import create_model
from jaxcls.training.metrics import eval_metrics_class
from jaxcls.training.optim import create_optimizer
from jaxcls.training.steps import StepSpec, TrainState, jit_steps, new_train_state, split_model

import jitted

STEPS = 5


def _state_and_step(config, *, ema: bool, decay: float, warmup: bool = True):
  """(step-0 state, jitted train step) of a BatchNorm ResNet-20 under SGD with momentum, so
  that the weights move differently each step."""
  config.optimizer.update(dict(name='sgd', momentum=0.9, weight_decay=0.0))
  tx = create_optimizer(config.optimizer, optax.constant_schedule(0.05))
  train_graph, eval_graph, params, model_state = split_model(
      create_model('cifar_resnet20', 10, width=4))
  train_fn, _ = jit_steps(StepSpec(
      train_graph=train_graph, eval_graph=eval_graph, tx=tx, metrics_cls=eval_metrics_class(10),
      mean=(0.5,) * 3, std=(0.25,) * 3, ema_decay=decay, ema_warmup=warmup))
  return new_train_state(params, model_state, tx, seed=0, ema=ema), train_fn


def _trajectory(config, decay: float, warmup: bool):
  """The states before and after each of STEPS train steps."""
  state, train_fn = _state_and_step(config, ema=True, decay=decay, warmup=warmup)
  trajectory = [jax.device_get(state)]
  for step in range(STEPS):
    state, _ = train_fn(state, jitted.random_batch(n=16, seed=step))
    trajectory.append(jax.device_get(state))  # Before the next step donates its buffers.
  return trajectory


def _decays(decay: float, warmup: bool) -> list[float]:
  """The decay of updates 1..STEPS, written out: timm's warm-up 1 - (1 + n)^(-2/3), n the
  updates before, capped at `decay`."""
  if not warmup:
    return [decay] * STEPS
  return [min(decay, 1 - (1 + n) ** (-2 / 3)) for n in range(STEPS)]


@pytest.mark.parametrize('warmup', [True, False])
def test_the_ema_is_the_closed_form_average_of_the_weights_trajectory(config, warmup):
  """ema_K = prod(d) * w_0 + sum_i (1 - d_i) prod_{j > i} d_j * w_i over the recorded
  weights w_i after each update, for the parameters and BatchNorm's running statistics."""
  decay = 0.8
  trajectory = _trajectory(config, decay, warmup)
  d = _decays(decay, warmup)
  weights = [np.prod(d)] + [(1 - d[i]) * np.prod(d[i + 1:]) for i in range(STEPS)]
  assert sum(weights) == pytest.approx(1.0)
  if warmup:
    assert weights[0] == 0.0  # The first update's decay is 0: the start is forgotten.
  final = trajectory[-1]
  for part in ('params', 'model_state'):
    recorded = [jax.tree.leaves(getattr(s, part)) for s in trajectory]
    averaged = jax.tree.leaves(final.ema[part])
    assert len(averaged) == len(recorded[0]) > 0
    moved = 0.0
    for leaf, ema in enumerate(averaged):
      expected = sum(w * np.asarray(r[leaf], np.float64) for w, r in zip(weights, recorded))
      np.testing.assert_allclose(np.asarray(ema), expected, rtol=1e-5, atol=1e-6)
      moved = max(moved, float(np.abs(np.asarray(ema) - np.asarray(recorded[-1][leaf])).max()))
    assert moved > 1e-4, f'the {part} EMA equals the last weights: nothing was averaged'


def test_a_state_without_ema_has_none_and_its_step_makes_none(config):
  state, train_fn = _state_and_step(config, ema=False, decay=0.9)
  assert state.ema is None
  state, _ = train_fn(state, jitted.random_batch(n=16))
  assert isinstance(state, TrainState) and state.ema is None


@pytest.mark.parametrize('field, value, message', [
    ('ema_decay', 1.0, 'must be in [0, 1)'),
    ('ema_decay', -0.1, 'must be in [0, 1)'),
    ('ema_select', 'best', "expected one of better, ema, raw"),
])
def test_bad_ema_settings_are_named(config, field, value, message):
  config.train[field] = value
  with pytest.raises(ConfigError, match=f'train.{field}') as raised:
    validate(config)
  assert message in str(raised.value)


def _ema_config(tiny_config, num_epochs: int, select: str = 'ema'):
  c = tiny_config
  c.train.num_epochs = num_epochs
  c.train.ema_decay = 0.9
  c.train.ema_select = select
  c.optimizer.schedule = 'constant'  # Training longer does not change the first epochs' rates.
  return c


@pytest.fixture(scope='module')
def ema_runs(tmp_path_factory):
  """A 2-epoch run choosing its EMA weights, uninterrupted and as 1 epoch rerun to 2."""
  from conftest import make_tiny  # pylint: disable=g-import-not-at-top
  from jaxcls.config import default_config  # pylint: disable=g-import-not-at-top
  from jaxcls.experiment import train_and_evaluate  # pylint: disable=g-import-not-at-top
  whole, resumed = tmp_path_factory.mktemp('ema_whole'), tmp_path_factory.mktemp('ema_resumed')
  results = train_and_evaluate(_ema_config(make_tiny(default_config()), 2), str(whole))
  train_and_evaluate(_ema_config(make_tiny(default_config()), 1), str(resumed))
  resumed_results = train_and_evaluate(_ema_config(make_tiny(default_config()), 2),
                                       str(resumed), allow_config_change=True)
  return dict(whole=whole, results=results, resumed=resumed, resumed_results=resumed_results)


def test_a_run_validates_both_weights_and_tests_the_chosen_ones(ema_runs):
  results = ema_runs['results']
  assert results['weights'] == 'ema'
  for entry in results['history']:
    assert entry['weights'] == 'ema'
    assert entry['val'] == entry['val_ema']
    assert entry['val_raw']['accuracy'] != entry['val_ema']['accuracy'] or (
        entry['val_raw']['loss'] != entry['val_ema']['loss'])
  # The test metrics are the EMA weights': reopening the best checkpoint gives them again.
  from jaxcls.evaluation.evaluate import evaluate  # pylint: disable=g-import-not-at-top
  from jaxcls.evaluation.reopen import load_run  # pylint: disable=g-import-not-at-top
  run = load_run(ema_runs['whole'])
  assert run.weights == 'ema' and run.step == results['best_step']
  reopened = evaluate([ema_runs['whole']], split='test')
  probabilities = reopened['results'][reopened['primary']]['probabilities']
  accuracy = float(np.mean(np.argmax(probabilities, -1) == reopened['labels']))
  assert accuracy == pytest.approx(results['test']['accuracy'], abs=1e-6)


def test_a_resumed_run_keeps_its_ema(ema_runs):
  """The EMA is in the checkpoint: stopping after epoch 1 and rerunning to 2 validates
  and tests the same averaged weights as the uninterrupted run."""
  whole, resumed = ema_runs['results'], ema_runs['resumed_results']
  for a, b in zip(whole['history'], resumed['history'], strict=True):
    for name in ('val_raw', 'val_ema'):
      assert a[name]['loss'] == pytest.approx(b[name]['loss'], rel=1e-5)
  assert resumed['test']['loss'] == pytest.approx(whole['test']['loss'], rel=1e-5)
  saved = json.loads((ema_runs['resumed'] / 'results.json').read_text())
  assert saved['weights'] == 'ema'
