"""The error a user's mistake raises, importable from every layer (this module imports nothing).

Programs turn a `ConfigError` into one line naming the field and its value,
never a traceback (`jaxcls.cli`).
"""


class ConfigError(ValueError):
  """A config with unknown keys, wrong types or impossible values; the message names them."""
