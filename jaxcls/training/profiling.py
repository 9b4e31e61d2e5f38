"""A `jax.profiler` trace of a few train steps, written where TensorBoard finds it.

The trace (device kernels, host dispatch, transfers, the input pipeline's
threads) lands in WORKDIR/plugins/profile/RUN/, which `tensorboard --logdir
WORKDIR` shows in its Profile tab (`pip install tensorboard-plugin-profile`)
and https://ui.perfetto.dev opens as well. It starts after the step that
compiled, so it shows the steady state, and stops after the device has
finished the last traced step, or at the end of the epoch (before
validation), whichever comes first.
"""

import jax
from absl import logging


class StepTrace:
  """Call after every train step with the step count; traces steps (start, start + num_steps]."""

  def __init__(self, logdir: str, *, start: int, num_steps: int):
    self._logdir, self._start, self._stop = logdir, start, start + num_steps
    self._active = False
    self.enabled = num_steps > 0

  def __call__(self, step: int, state) -> None:
    if not self.enabled:
      return
    if step == self._start and not self._active:
      jax.block_until_ready(state)  # Earlier steps stay out of the trace.
      jax.profiler.start_trace(self._logdir)
      self._active = True
      logging.info('profiling steps %d to %d into %s', self._start + 1, self._stop, self._logdir)
    elif step >= self._stop and self._active:
      self.close(state)

  def close(self, state=None) -> None:
    if self._active:
      if state is not None:
        jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self._active = False
      self.enabled = False
      logging.info('profile written: tensorboard --logdir %s (Profile tab)', self._logdir)
