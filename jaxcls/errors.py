"""ConfigError, and the form of config messages naming a field (this module imports nothing).

Programs turn a `ConfigError` into one line naming the field and its value,
never a traceback (`jaxcls.cli`).
"""


class ConfigError(ValueError):
  """A config with unknown keys, wrong types or impossible values; the message names them."""


def either(choices, *, or_else: str = '') -> str:
  """"'a', 'b' or 'c'": the choices as config messages list them (`or_else` last, unquoted)."""
  items = [repr(c) for c in choices] + ([or_else] if or_else else [])
  return items[0] if len(items) == 1 else ', '.join(items[:-1]) + ' or ' + items[-1]


class ConfigProblems(list):
  """The messages, `config.GROUP.FIELD=VALUE!r: why`, of one config group's failed checks.

  Each component's `config_errors(group, ...)` fills one: `check(ok, field, why)`, or
  `report(field, why)` for a problem found otherwise.
  """

  def __init__(self, name: str, group):
    super().__init__()
    self.name, self.group = name, group

  def check(self, ok: bool, field: str, why: str) -> None:
    if not ok:
      self.report(field, why)

  def report(self, field: str, why: str) -> None:
    self.append(f'config.{self.name}.{field}={self.group[field]!r}: {why}')


# `python -m jaxcls.main`'s exit status when an Optuna sweep's pruner stopped the run: the
# sweep records the trial as pruned, not failed (jaxcls.launch.sweep).
PRUNED_EXIT_STATUS = 3


class TrialPruned(Exception):
  """The sweep's pruner stopped this run after a validation (jaxcls.training.pruning)."""
