"""What the programs that reopen a finished run share: the --step flag's values, a quiet console."""

from absl import app, flags, logging


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
