"""Metric writers and progress reports, with a console fallback.

`clu.metric_writers` (TensorBoard event files) imports TensorFlow. Where
TensorFlow is not installed (e.g. a bare GPU image) training still runs and
logs to the console; the import is therefore deferred to `create_writer`.
"""

import sys
import time
from collections.abc import Mapping

from absl import logging


class ConsoleWriter:
  """The subset of clu's MetricWriter interface the trainer uses, logging only."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    logging.info('[%d] %s', step, ', '.join(f'{k}={float(v):.5g}' for k, v in scalars.items()))

  def write_hparams(self, hparams: Mapping[str, object]) -> None:
    logging.info('hparams: %s', dict(hparams))

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def create_writer(workdir: str, *, is_main_process: bool):
  """TensorBoard events in `workdir` plus a console line; console alone without TensorFlow.

  Only the main process writes event files (`just_logging` elsewhere), so a
  multi-host run leaves one set of curves.
  """
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    logging.warning('clu.metric_writers unavailable (%s): logging to the console only', e)
    return ConsoleWriter()
  return metric_writers.create_default_writer(
      workdir, just_logging=not is_main_process, asynchronous=True)


class ProgressReporter:
  """Steps/s and ETA every so often, and a progress bar on an interactive terminal.

  Uses `clu.periodic_actions.ReportProgress` where clu's writers import; the
  bar (tqdm) appears only when stderr is a terminal, so logs stay clean.
  """

  def __init__(self, num_train_steps: int, writer, *, initial_step: int = 0,
               every_secs: float = 60.0):
    self._action = None
    try:
      from clu import periodic_actions  # pylint: disable=g-import-not-at-top
      self._action = periodic_actions.ReportProgress(
          num_train_steps=num_train_steps, writer=writer, every_secs=every_secs)
    except ImportError:
      self._last = (time.monotonic(), initial_step)
      self._every_secs = every_secs
    self._bar = None
    if sys.stderr.isatty():
      import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=num_train_steps, initial=initial_step, unit='step',
                            dynamic_ncols=True)

  def __call__(self, step: int) -> None:
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
    if self._action is not None:
      self._action(step)
      return
    now = time.monotonic()
    last_time, last_step = self._last
    if now - last_time >= self._every_secs:
      logging.info('step %d: %.2f steps/s', step, (step - last_step) / (now - last_time))
      self._last = (now, step)

  def timed(self, name: str):
    """Context manager attributing wall time to `name` in the progress report."""
    if self._action is not None:
      return self._action.timed(name)
    import contextlib  # pylint: disable=g-import-not-at-top
    return contextlib.nullcontext()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
