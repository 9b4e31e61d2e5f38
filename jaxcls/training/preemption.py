"""SIGTERM/SIGINT during training: finish the step, checkpoint, exit with a clear message.

Schedulers (SLURM, Kubernetes, preemptible cloud VMs) send SIGTERM and give a
grace period; a user presses Ctrl-C. Either way the loop should not die
mid-step: `PreemptionGuard` turns the first signal into a flag the loop polls
between steps, and restores the default handlers afterwards, so a second
signal still kills at once.
"""

import signal
import threading

from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Training stopped on a signal after checkpointing; rerun the command to resume."""

  def __init__(self, signal_name: str, step: int, workdir: str):
    super().__init__(f'{signal_name} received: stopped after step {step} and saved a '
                     f'checkpoint; run the same command to resume from it ({workdir})')
    self.signal_name, self.step = signal_name, step


class PreemptionGuard:
  """Context manager: `guard.requested` names the signal that asked the loop to stop."""

  def __init__(self):
    self.requested: str | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.requested:  # A second signal: the user means it.
      signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
      signal.raise_signal(signum)
      return
    self.requested = name
    logging.warning('%s received: finishing the current step, then checkpointing and '
                    'stopping (send it again to stop at once)', name)

  def __enter__(self) -> 'PreemptionGuard':
    if threading.current_thread() is threading.main_thread():  # Python's rule for handlers.
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
