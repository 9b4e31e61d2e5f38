"""Where `--config NAME.py[:ROW]` points: a file as given, else one of the shipped configs.

The configs travel inside the package (jaxcls/configs, linked as configs/ at the top of
a checkout), so `jaxcls train --config default.py` or `--config configs/finetune_photos.py:full`
works after `pip install jaxcls`, from any directory, with no checkout beside it.
"""

from pathlib import Path

SHIPPED = Path(__file__).resolve().parents[1] / 'configs'


def shipped() -> list[str]:
  """The shipped configs' file names."""
  return sorted(p.name for p in SHIPPED.glob('*.py') if p.name != '__init__.py')


def resolve(spec: str) -> str:
  """FILE[:ARG] with FILE an existing path, else the shipped config of that name (with or
  without configs/ and .py); unchanged when neither exists, for the caller's own error."""
  path, sep, arg = spec.partition(':')
  if not path or Path(path).is_file():
    return spec
  name = Path(path).name if Path(path).parent.name in ('', 'configs') else None
  if name:
    candidate = SHIPPED / (name if name.endswith('.py') else name + '.py')
    if candidate.is_file() and candidate.name != '__init__.py':
      return str(candidate) + sep + arg
  return spec
