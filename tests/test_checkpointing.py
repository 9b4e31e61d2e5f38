"""Checkpoints keep the latest N and the best by the validation metric, and restore exactly."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcls.training.checkpointing import Checkpointer
from jaxcls.training.steps import TrainState


def _state(step):
  return TrainState(step=jnp.asarray(step, jnp.int32), params={'w': jnp.full((3, 2), step, jnp.float32)},
                    model_state={'mean': jnp.arange(2.0) + step}, opt_state=(jnp.zeros(3),),
                    rng=jax.random.PRNGKey(step))


def _checkpointer(directory, keep=2, mode='max', metric='accuracy'):
  return Checkpointer(str(directory), ml_collections.ConfigDict(
      dict(keep=keep, best_metric=metric, best_mode=mode)))


def test_keeps_the_latest_and_the_best(tmp_path):
  checkpointer = _checkpointer(tmp_path)
  for step, accuracy in zip(range(1, 6), [0.5, 0.9, 0.6, 0.7, 0.8]):
    checkpointer.save(_state(step), meta={'epoch': step}, metrics={'accuracy': accuracy})
  checkpointer.wait()
  assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [2, 4, 5]
  assert checkpointer.best_step() == 2
  assert checkpointer.latest_step() == 5


def test_best_by_minimum_loss(tmp_path):
  checkpointer = _checkpointer(tmp_path, keep=1, mode='min', metric='loss')
  for step, loss in zip(range(1, 4), [0.3, 0.1, 0.2]):
    checkpointer.save(_state(step), meta={}, metrics={'loss': loss})
  checkpointer.wait()
  assert checkpointer.best_step() == 2
  assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [2, 3]


def test_restore_returns_the_saved_state_and_meta(tmp_path):
  checkpointer = _checkpointer(tmp_path)
  checkpointer.save(_state(7), meta={'epoch': 7, 'history': [{'a': 1.5}]}, metrics={'accuracy': 1})
  checkpointer.wait()
  restored, meta = _checkpointer(tmp_path).restore(7, _state(0))
  assert meta == {'epoch': 7, 'history': [{'a': 1.5}]}
  for want, got in zip(jax.tree.leaves(_state(7)), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(got, want)


def test_relative_directories_work(tmp_path, monkeypatch):
  """`--workdir runs/x` as the README writes it: Orbax itself only takes absolute paths."""
  monkeypatch.chdir(tmp_path)
  checkpointer = _checkpointer('runs/x/checkpoints')
  checkpointer.save(_state(3), meta={'epoch': 1}, metrics={'accuracy': 0.5})
  checkpointer.wait()
  assert (tmp_path / 'runs' / 'x' / 'checkpoints' / '3').is_dir()
  assert checkpointer.restore(3, _state(0))[1] == {'epoch': 1}
