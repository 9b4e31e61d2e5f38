"""`python -m jaxcls.main --config configs/NAME.py --workdir DIR`: trains (jaxcls.cli.train).

Kept at the top of the package because it is the entry point every README,
launcher and scheduler script names; the program itself is `jaxcls.cli.train`.
"""

from jaxcls.cli.train import run

if __name__ == '__main__':
  run()
