"""The learning-rate range test (Smith 2017; fastai's `lr_find`, Lightning's `Tuner.lr_find`).

Train steps of the real run (`loop.build_training`: its model and pretrained
weights, the first phase of its fine-tuning plan with the frozen groups
frozen, its per-group optimizer and multipliers, data, augmentation and
mixing), with the config's schedule replaced by one that grows the rate
exponentially from `start_lr` to `end_lr` over `num_steps` updates. The loss
of each step is recorded against the rate it applied. The sweep stops once
the running (causal) exponential moving average of the loss, debiased as
fastai and Lightning keep it, exceeds `divergence` times its best so far, or a
loss is not finite. The suggestion is read from the same average run forwards
and then backwards over the finished sweep (`centred`), which has no lag: a
running average trails the loss by smoothing / (1 - smoothing) steps, more
than a decade of rates in a short sweep, and moves the steepest descent to
rates where the loss is already rising. The trained state is thrown away:
nothing is checkpointed.
"""

import dataclasses
import itertools
import math
import time

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from jaxcls.training.loop import build_training
from jaxcls.training.metrics import NO_STEP, NONFINITE

RULES = {
    'steepest': 'the rate where the smoothed loss falls fastest per log rate, before its '
                'minimum',
    'minimum': 'the rate of the smallest smoothed loss, divided by 10',
}
# The first steps of the sweep (the moving average still warming up) are no candidates for
# the steepest descent, as in Lightning (`skip_begin=10`).
SKIP_BEGIN = 10


class RangeTestError(ValueError):
  """Arguments the range test cannot run with, or a loss that diverged at the first rates."""


def argument_errors(*, start_lr: float, end_lr: float, num_steps: int, divergence: float,
                    smoothing: float | None, rule: str) -> list[str]:
  """What is wrong with the range test's arguments, each message naming the value."""
  problems = []
  if not start_lr > 0:
    problems.append(f'start_lr={start_lr:g}: must be positive')
  if not end_lr > start_lr:
    problems.append(f'end_lr={end_lr:g}: must be larger than start_lr={start_lr:g}')
  if num_steps < 2:
    problems.append(f'num_steps={num_steps}: must be >= 2')
  if not divergence > 1:
    problems.append(f'divergence={divergence:g}: must be > 1 (a multiple of the best loss)')
  if smoothing is not None and not 0 <= smoothing < 1:  # None: `default_smoothing`.
    problems.append(f'smoothing={smoothing:g}: must be in [0, 1)')
  if rule not in RULES:
    problems.append(f'rule={rule!r}: expected one of {", ".join(RULES)}')
  return problems


@dataclasses.dataclass(frozen=True)
class RangeTest:
  """One sweep: the rate each step applied, its raw and smoothed loss, the suggestion."""
  learning_rates: list[float]
  losses: list[float]
  smoothed_losses: list[float]  # Centred (`centred`): the suggestions' and the plot's.
  running_losses: list[float]  # The running average the divergence test watched.
  suggestion: float
  rule: str  # A key of RULES.
  suggestions: dict  # Every rule's rate, for comparing.
  stopped: str  # Why the sweep ended.
  diverged: bool  # False: end_lr came first, and the smallest loss may lie beyond it.
  start_lr: float
  end_lr: float
  num_steps: int
  divergence: float
  smoothing: float
  seconds: float

  def to_json(self) -> dict:
    return dict(dataclasses.asdict(self), rule_text=RULES[self.rule])


def exponential_schedule(start_lr: float, end_lr: float, num_steps: int) -> optax.Schedule:
  """start_lr at update 0, end_lr at update num_steps - 1, geometric in between."""
  return optax.exponential_decay(init_value=start_lr, transition_steps=max(num_steps - 1, 1),
                                 decay_rate=end_lr / start_lr)


def smoothed(losses, smoothing: float) -> list[float]:
  """The debiased exponential moving average of `losses` (weight `smoothing` on the past)."""
  average, out = 0.0, []
  for i, loss in enumerate(losses):
    average = smoothing * average + (1 - smoothing) * loss
    out.append(average / (1 - smoothing ** (i + 1)))
  return out


def centred(losses, smoothing: float) -> list[float]:
  """`smoothed` forwards, then backwards over the result: as smooth, without the lag."""
  return smoothed(smoothed(losses, smoothing)[::-1], smoothing)[::-1]


def suggest(learning_rates, smoothed_losses) -> dict[str, float]:
  """{rule: rate} for every rule of RULES (see there)."""
  rates, values = np.asarray(learning_rates), np.asarray(smoothed_losses)
  best = int(np.argmin(values))
  suggestions = {'minimum': float(rates[best] / 10)}
  # The descent before the minimum; from SKIP_BEGIN when the sweep is long enough for it.
  begin = SKIP_BEGIN if best - SKIP_BEGIN >= 3 else 0
  if best - begin >= 2:
    slopes = np.gradient(values[begin:best + 1], np.log(rates[begin:best + 1]))
    suggestions['steepest'] = float(rates[begin + int(np.argmin(slopes))])
  else:  # The loss was lowest at the very start: nothing descends.
    suggestions['steepest'] = suggestions['minimum']
  return suggestions


def default_smoothing(num_steps: int) -> float:
  """0.95 (fastai's and Lightning's 0.98 is for a running average of 100 steps) from 200
  steps on; for a shorter sweep 1 - 10 / num_steps, so that the centred average spans about
  a tenth of the sweep rather than washing it out (60 steps: 0.83)."""
  return float(min(0.95, max(0.0, 1 - 10 / num_steps)))


def range_test(config: ml_collections.ConfigDict, workdir, *, start_lr: float = 1e-7,
               end_lr: float = 10.0, num_steps: int = 200, divergence: float = 4.0,
               smoothing: float | None = None, rule: str = 'steepest') -> RangeTest:
  """Sweeps the learning rate over `num_steps` train steps of `config` (validated and
  resolved: `jaxcls.experiment.find_learning_rate`); `workdir` gets the data's splits.json
  and the parameter table, as a run's would, and no checkpoint. `smoothing` None:
  `default_smoothing(num_steps)`."""
  if smoothing is None:
    smoothing = default_smoothing(num_steps)
  problems = argument_errors(start_lr=start_lr, end_lr=end_lr, num_steps=num_steps,
                             divergence=divergence, smoothing=smoothing, rule=rule)
  if problems:
    raise RangeTestError('; '.join(problems))
  started = time.monotonic()
  training = build_training(config, workdir, exponential_schedule(start_lr, end_lr, num_steps))
  state, phase, train_fn, _ = training.first_phase(config.seed)
  logging.info('learning-rate range test: %g -> %g over %d steps, training %s', start_lr,
               end_lr, num_steps, ', '.join(phase.trainable.groups))
  rates, losses, stopped = [], [], f'reached end_lr={end_lr:g} without diverging'
  diverged, best = True, math.inf
  batches = itertools.chain.from_iterable(
      training.train_batches(epoch, 0, training.cached(phase)) for epoch in itertools.count())
  for step, batch in zip(range(num_steps), batches):
    state, step_metrics = train_fn(state, batch)
    computed = jax.device_get(step_metrics.compute())
    rate = float(computed['learning_rate'])
    if int(computed[NONFINITE]) != NO_STEP:
      stopped = f'non-finite loss or gradient at step {step + 1} (rate {rate:.3g})'
      break
    rates.append(rate)
    losses.append(float(computed['loss']))
    current = smoothed(losses, smoothing)[-1]
    best = min(best, current)
    if (step + 1) % max(num_steps // 10, 1) == 0:
      logging.info('step %d/%d: rate %.3g, loss %.4f (smoothed %.4f)', step + 1, num_steps,
                   rate, losses[-1], current)
    if step > 0 and current > divergence * best:
      stopped = (f'running loss {current:.4g} > {divergence:g} x its best {best:.4g} at step '
                 f'{step + 1} (rate {rate:.3g})')
      break
  else:
    diverged = False
  del state  # The model is not kept.
  if len(losses) < 2:
    raise RangeTestError(f'the loss diverged at once ({stopped}); lower start_lr={start_lr:g}')
  smoothed_losses = centred(losses, smoothing)
  suggestions = suggest(rates, smoothed_losses)
  return RangeTest(learning_rates=rates, losses=losses, smoothed_losses=smoothed_losses,
                   running_losses=smoothed(losses, smoothing), suggestion=suggestions[rule],
                   rule=rule, suggestions=suggestions, stopped=stopped, diverged=diverged,
                   start_lr=start_lr, end_lr=end_lr, num_steps=num_steps,
                   divergence=divergence, smoothing=smoothing,
                   seconds=time.monotonic() - started)
