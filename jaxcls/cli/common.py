"""What the programs that reopen a finished run share: the --step flag's values, a quiet console."""

import sys

from absl import app, flags, logging

from jaxcls.evaluation.reopen import Run, load_run
from jaxcls.training.checkpointing import CheckpointRestoreError


def parse_step(step: str) -> int | str:
  """--step: 'best', 'latest' or a step number (a usage error otherwise)."""
  if step in ('best', 'latest'):
    return step
  if not step.isdigit():
    raise app.UsageError(f"--step={step}: expected 'best', 'latest' or a step number")
  return int(step)


def quiet_libraries() -> None:
  """Keeps the console to the results: INFO logs (Orbax's restore chatter) only on --verbosity."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def reopen(program: str, workdir: str, step: str) -> Run:
  """The run in `workdir` at --step, or one line naming what is wrong (no traceback)."""
  try:
    return load_run(workdir, parse_step(step))
  except (FileNotFoundError, ValueError, CheckpointRestoreError) as e:
    sys.exit(f'jaxcls {program}: {e}')
