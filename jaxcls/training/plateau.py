"""Responses to a validation metric that stops improving: ReduceLROnPlateau and early stopping.

Both are driven once per epoch by a host-side float (a validation metric, to
maximise like accuracy or to minimise like loss), so both are small pure
objects: `update(state, value) -> state`, with a frozen, JSON-serialisable
state that the loop keeps in the checkpoint's meta (`state.to_dict()`,
`State.from_dict(d)`).

`optax.contrib.reduce_on_plateau` implements the same schedule as a gradient
transformation fed a `value=` at every update, averaging `accumulation_size`
values. An epoch-level metric does not fit that: the jitted step would need
the metric, and the optimizer state's counters would advance per step. Its
comparison also only minimises; negating a max-metric turns its relative
threshold the wrong way (best * (1 - rtol) admits values below the best).
`ReduceLROnPlateau` keeps optax's semantics (the scale drops after exactly
`patience` epochs without improvement, then `cooldown` epochs are ignored;
the tests check that both give the same scales on the same values) and adds
`mode`. The loop passes `state.scale` to the train step, which multiplies the
optimizer's updates by it: for SGD, Nesterov and AdamW (decoupled decay
included) that is exactly a learning rate scaled by it.
"""

import dataclasses
import math
from typing import Any

import ml_collections

from jaxcls.errors import ConfigProblems, either
from jaxcls.training.metrics import BEST_METRICS

MODES = ('max', 'min')
THRESHOLD_MODES = ('rel', 'abs')


def is_improvement(value: float, best: float | None, mode: str, threshold: float = 0.0,
                   threshold_mode: str = 'abs') -> bool:
  """Whether `value` beats `best` by more than the threshold (any finite value beats None).

  'rel': by threshold * |best|; 'abs': by threshold. NaN never improves.
  """
  if math.isnan(value):
    return False
  if best is None:
    return True
  margin = threshold * abs(best) if threshold_mode == 'rel' else threshold
  return value > best + margin if mode == 'max' else value < best - margin


# The rule of each field of ReduceLROnPlateau and EarlyStopping, (ok(value), why): the
# dataclasses raise on a value that breaks it, `config_errors` reports config.plateau.FIELD's.
_RULES = {
    'mode': (lambda v: v in MODES, f'expected {either(MODES)}'),
    'factor': (lambda v: 0 < v < 1, 'must be in (0, 1)'),
    'patience': (lambda v: v >= 1, 'must be >= 1'),
    'threshold': (lambda v: v >= 0, 'must be >= 0'),
    'threshold_mode': (lambda v: v in THRESHOLD_MODES, f'expected {either(THRESHOLD_MODES)}'),
    'cooldown': (lambda v: v >= 0, 'must be >= 0'),
    'min_scale': (lambda v: 0 <= v <= 1, 'must be in [0, 1]'),
    'min_delta': (lambda v: v >= 0, 'must be >= 0'),
}


def field_problems(values: dict[str, Any]) -> list[tuple[str, str]]:
  """(field, why) for each of `values` (field -> value) that breaks its rule."""
  return [(field, _RULES[field][1]) for field, value in values.items()
          if not _RULES[field][0](value)]


def _raise_problems(instance) -> None:
  """ValueError naming every field of the dataclass `instance` that breaks its rule."""
  values = {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}
  problems = field_problems(values)
  if problems:
    raise ValueError(f'{type(instance).__name__}: ' + '; '.join(
        f'{field}={values[field]!r}: {why}' for field, why in problems))


class _JsonState:
  """to_dict / from_dict for the frozen state dataclasses (checkpoint meta)."""

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]):
    return cls(**d)


@dataclasses.dataclass(frozen=True)
class PlateauState(_JsonState):
  best: float | None = None
  # Consecutive epochs without improvement (reset by a reduction and in cooldown).
  num_bad_epochs: int = 0
  # Epochs still ignored after the last reduction.
  cooldown_left: int = 0
  # The learning-rate multiplier: 1, then factor, factor^2, ... down to min_scale.
  scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class ReduceLROnPlateau:
  """Multiplies the learning rate by `factor` after `patience` epochs without improvement.

  Attributes:
    mode: 'max' for metrics like accuracy, 'min' for metrics like loss.
    factor: the multiplier of each reduction, in (0, 1).
    patience: epochs without improvement that trigger a reduction (>= 1).
    threshold: how much better than the best a value must be to count.
    threshold_mode: 'rel' (threshold * |best|) or 'abs' (threshold).
    cooldown: epochs after a reduction during which bad epochs are not counted.
    min_scale: the scale never goes below this, in [0, 1].
  """
  mode: str = 'max'
  factor: float = 0.1
  patience: int = 10
  threshold: float = 1e-4
  threshold_mode: str = 'rel'
  cooldown: int = 0
  min_scale: float = 0.0

  def __post_init__(self):
    _raise_problems(self)

  def init(self) -> PlateauState:
    return PlateauState()

  def update(self, state: PlateauState, value: float) -> PlateauState:
    """The state after an epoch whose validation metric is `value`."""
    value = float(value)
    improved = is_improvement(value, state.best, self.mode, self.threshold, self.threshold_mode)
    best = value if improved else state.best
    num_bad_epochs = 0 if improved else state.num_bad_epochs + 1
    if state.cooldown_left > 0:
      return PlateauState(best=best, num_bad_epochs=0, cooldown_left=state.cooldown_left - 1,
                          scale=state.scale)
    if num_bad_epochs >= self.patience:
      return PlateauState(best=best, num_bad_epochs=0, cooldown_left=self.cooldown,
                          scale=max(state.scale * self.factor, self.min_scale))
    return PlateauState(best=best, num_bad_epochs=num_bad_epochs, cooldown_left=0,
                        scale=state.scale)


@dataclasses.dataclass(frozen=True)
class EarlyStoppingState(_JsonState):
  best: float | None = None
  # The epoch (1-based count of updates) of `best`; 0 before the first.
  best_epoch: int = 0
  # Updates so far.
  epoch: int = 0
  num_bad_epochs: int = 0
  should_stop: bool = False


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
  """Stops after `patience` consecutive epochs that do not beat the best by `min_delta`.

  With patience 3 and the best at epoch 5, training stops after epoch 8
  unless epoch 6, 7 or 8 improves on it.

  Attributes:
    patience: epochs without improvement before stopping (>= 1).
    min_delta: how much a value must beat the best by to count (>= 0).
    mode: 'max' for metrics like accuracy, 'min' for metrics like loss.
  """
  patience: int
  min_delta: float = 0.0
  mode: str = 'max'

  def __post_init__(self):
    _raise_problems(self)

  def init(self) -> EarlyStoppingState:
    return EarlyStoppingState()

  def update(self, state: EarlyStoppingState, value: float) -> EarlyStoppingState:
    """The state after an epoch whose validation metric is `value`."""
    value = float(value)
    epoch = state.epoch + 1
    if is_improvement(value, state.best, self.mode, self.min_delta, 'abs'):
      return EarlyStoppingState(best=value, best_epoch=epoch, epoch=epoch, num_bad_epochs=0,
                                should_stop=False)
    num_bad_epochs = state.num_bad_epochs + 1
    return dataclasses.replace(state, epoch=epoch, num_bad_epochs=num_bad_epochs,
                               should_stop=num_bad_epochs >= self.patience)


_METRIC_WHY = f'expected a validation metric {BEST_METRICS} or empty (checkpoint.best_metric)'
_MODE_WHY = f"expected {either(MODES, or_else='empty (checkpoint.best_mode)')}"


def config_errors(plateau_config: ml_collections.ConfigDict) -> list[str]:
  """What is wrong with `config.plateau` (empty metric and mode: the checkpoint's)."""
  c, p = plateau_config, ConfigProblems('plateau', plateau_config)
  p.check(c.metric in ('', *BEST_METRICS), 'metric', _METRIC_WHY)
  p.check(c.mode in ('', *MODES), 'mode', _MODE_WHY)
  fields = ('factor', 'patience', 'threshold', 'threshold_mode', 'cooldown', 'min_scale')
  for field, why in field_problems({f: c[f] for f in fields}):
    p.report(field, why)
  return p


def early_stopping_config_errors(stopping_config: ml_collections.ConfigDict) -> list[str]:
  """What is wrong with `config.early_stopping` (patience 0: off; else EarlyStopping's rules)."""
  c, p = stopping_config, ConfigProblems('early_stopping', stopping_config)
  p.check(c.patience >= 0, 'patience', 'must be >= 0 (0: off)')
  for field, why in field_problems({'min_delta': c.min_delta}):
    p.report(field, why)
  p.check(c.metric in ('', *BEST_METRICS), 'metric', _METRIC_WHY)
  p.check(c.mode in ('', *MODES), 'mode', _MODE_WHY)
  return p
