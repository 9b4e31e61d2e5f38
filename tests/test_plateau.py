"""ReduceLROnPlateau and early stopping on scripted validation metrics."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcls.training.plateau import (EarlyStopping, EarlyStoppingState, PlateauState, ReduceLROnPlateau,
                            is_improvement)


def _scales(plateau, values):
  state, scales = plateau.init(), []
  for value in values:
    state = plateau.update(state, value)
    scales.append(state.scale)
  return scales


def test_plateau_reduces_after_exactly_patience_bad_epochs():
  plateau = ReduceLROnPlateau(mode='max', factor=0.5, patience=3, threshold=0.0)
  # Best 0.8 at epoch 2; epochs 3-5 are bad: the third one reduces.
  assert _scales(plateau, [0.5, 0.8, 0.7, 0.8, 0.79, 0.6]) == [1, 1, 1, 1, 0.5, 0.5]


def test_plateau_min_mode_treats_lower_as_better():
  plateau = ReduceLROnPlateau(mode='min', factor=0.1, patience=2, threshold=0.0)
  scales = _scales(plateau, [1.0, 0.9, 0.95, 0.91, 0.5, 0.6, 0.7])
  np.testing.assert_allclose(scales, [1, 1, 1, 0.1, 0.1, 0.1, 0.01])


def test_plateau_threshold_requires_a_margin():
  relative = ReduceLROnPlateau(mode='max', factor=0.5, patience=1, threshold=0.01)
  assert _scales(relative, [0.5, 0.504, 0.51]) == [1, 0.5, 0.5]  # 0.504 < 0.5 * 1.01.
  absolute = ReduceLROnPlateau(mode='min', factor=0.5, patience=1, threshold=0.1,
                               threshold_mode='abs')
  assert _scales(absolute, [1.0, 0.95, 0.85]) == [1, 0.5, 0.5]


def test_plateau_cooldown_ignores_epochs_after_a_reduction_and_min_scale_is_a_floor():
  plateau = ReduceLROnPlateau(mode='max', factor=0.1, patience=1, threshold=0.0, cooldown=2,
                              min_scale=0.005)
  # Reduce at epoch 2; epochs 3, 4 are cooldown; 5 reduces again; 6, 7 cooldown; 8 hits the floor.
  np.testing.assert_allclose(_scales(plateau, [1.0] + [0.5] * 7),
                             [1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.005])


def test_plateau_matches_optax_reduce_on_plateau_on_a_loss():
  values = [1.0, 0.8, 0.8, 0.7999, 0.81, 0.9, 0.6, 0.61, 0.62, 0.63, 0.64, 0.65, 0.3, 0.31]
  kwargs = dict(factor=0.5, patience=2, cooldown=1, min_scale=0.2)
  ours = _scales(ReduceLROnPlateau(mode='min', threshold=1e-3, **kwargs), values)
  tx = optax.contrib.reduce_on_plateau(rtol=1e-3, **kwargs)
  update = jax.jit(lambda state, value: tx.update(jnp.zeros(()), state, value=value)[1])
  state, theirs = tx.init(jnp.zeros(())), []
  for value in values:
    state = update(state, value)
    theirs.append(float(state.scale))
  np.testing.assert_allclose(ours, theirs, rtol=1e-6)
  # Cooldown swallows the bad 0.81; the third reduction stops at min_scale.
  assert ours[-1] == 0.2 and ours.count(0.5) == 5


def test_plateau_state_round_trips_through_json():
  plateau = ReduceLROnPlateau(patience=1)
  state = plateau.update(plateau.update(plateau.init(), 0.9), 0.8)
  restored = PlateauState.from_dict(json.loads(json.dumps(state.to_dict())))
  assert restored == state and restored.scale == pytest.approx(0.1)
  assert plateau.update(restored, 0.7) == plateau.update(state, 0.7)


@pytest.mark.parametrize('mode,values,stop_epoch,best_epoch', [
    ('max', [0.5, 0.6, 0.7, 0.69, 0.705, 0.7, 0.65, 0.8], 6, 3),
    ('min', [2.0, 1.5, 1.6, 1.2, 1.195, 1.3, 1.25, 1.0], 7, 4),
])
def test_early_stopping_stops_after_patience_epochs_without_min_delta_improvement(
    mode, values, stop_epoch, best_epoch):
  stopping = EarlyStopping(patience=3, min_delta=0.01, mode=mode)
  state = stopping.init()
  for epoch, value in enumerate(values, start=1):
    state = stopping.update(state, value)
    if state.should_stop:
      break
  assert (epoch, state.best_epoch, state.best) == (stop_epoch, best_epoch, values[best_epoch - 1])


def test_early_stopping_state_round_trips_through_json():
  stopping = EarlyStopping(patience=2)
  state = stopping.update(stopping.update(stopping.init(), 0.5), 0.4)
  restored = EarlyStoppingState.from_dict(json.loads(json.dumps(state.to_dict())))
  assert restored == state
  assert stopping.update(restored, 0.3).should_stop


def test_nan_is_never_an_improvement():
  assert not is_improvement(float('nan'), 1.0, 'min')
  assert not is_improvement(float('nan'), None, 'max')
  assert is_improvement(0.1, None, 'max')


def test_invalid_settings_are_rejected():
  with pytest.raises(ValueError, match='factor'):
    ReduceLROnPlateau(factor=1.5)
  with pytest.raises(ValueError, match='mode'):
    EarlyStopping(patience=3, mode='maximise')
  with pytest.raises(ValueError, match='patience'):
    EarlyStopping(patience=0)
