"""Training: `python -m jaxcls.main --config configs/NAME.py --workdir DIR` (this module).

Fields of the config can be overridden on the command line, e.g.
`--config.optimizer.learning_rate=0.01 --config.train.num_epochs=5`. Running
the same command again with the same workdir resumes from its latest
checkpoint.
"""

import os
import signal
import sys
from pathlib import Path

# TensorFlow (behind TensorBoard's writer) prints its oneDNN and CPU-feature notices at import.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags, logging
from ml_collections import config_flags

import jaxcls
from jaxcls.cli import config_files
# pylint: enable=g-import-not-at-top,wrong-import-position

_PACKAGE = os.path.dirname(os.path.abspath(jaxcls.__file__)) + os.sep
# clu's progress line: steps/s, the share done and the ETA, once a minute.
_PROGRESS = os.path.join('clu', 'platform', 'local.py')


class QuietLibraries(logging.logging.Filter):
  """The console of a run without --verbosity: jaxcls's own lines (devices, data, parameters,
  each epoch, the test), clu's periodic progress line and every warning; the libraries' INFO
  chatter (JAX's backend search, Orbax's saves, clu's echo of every metric written to
  TensorBoard) goes. `--verbosity=0` shows it all, `--verbosity=1` the config and parameter
  table too (also in WORKDIR/config.json and parameters.txt)."""

  def filter(self, record):
    return (record.levelno >= logging.logging.WARNING or record.pathname.startswith(_PACKAGE)
            or record.pathname.endswith(_PROGRESS))


def _define_flags():
  """Defined by `run` alone, so that importing this module defines no flag."""
  config_flags.DEFINE_config_file(
      'config', None, 'Config file: a Python file whose get_config() returns a ConfigDict.',
      lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
  flags.DEFINE_bool(
      'allow_config_change', False, 'Continue the run in --workdir even though its saved config '
      'differs from this one (by default such a rerun is refused).')
  flags.mark_flags_as_required(['config', 'workdir'])


def begin(argv) -> None:
  """What a program that builds a run from --config does first: refuse positional arguments,
  and keep the console quiet (`QuietLibraries`) unless --verbosity is given."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.get_absl_handler().addFilter(QuietLibraries())


def main(argv):
  begin(argv)
  # Imported here so that `--help` and flag errors come back without loading JAX.
  # pylint: disable=g-import-not-at-top
  from jaxcls.errors import PRUNED_EXIT_STATUS, ConfigError, TrialPruned
  from jaxcls.experiment import train_and_report
  from jaxcls.training.checkpointing import CheckpointRestoreError, CheckpointSaveError
  from jaxcls.training.loop import NonFiniteError
  from jaxcls.training.parallel import initialize_distributed
  from jaxcls.training.preemption import Preempted
  # pylint: enable=g-import-not-at-top
  initialize_distributed()
  args = flags.FLAGS
  try:
    results = train_and_report(args.config, args.workdir,
                               allow_config_change=args.allow_config_change)
  except (ConfigError, NonFiniteError, CheckpointSaveError, CheckpointRestoreError) as e:
    sys.exit(f'jaxcls: {e}')
  except TrialPruned as e:  # Not a failure: the sweep records the trial as pruned.
    print(f'jaxcls: {e}', file=sys.stderr)
    sys.exit(PRUNED_EXIT_STATUS)
  except Preempted as e:
    # 128 + the signal number, as a shell reports a process the signal ended.
    print(f'jaxcls: {e}', file=sys.stderr)
    sys.exit(128 + int(getattr(signal, e.signal_name)))
  logging.info('test metrics: %s; results in %s/results.json', results['test'], args.workdir)
  print(f"test accuracy {results['test']['accuracy']:.4f} -> {args.workdir}/results.json")


def _config_argument(argv: list[str]) -> list[str]:
  """`--config NAME.py[:ROW]` pointed at a shipped config when no such file is here; a
  config file that exists nowhere ends the run in one line naming it."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    if arg == '--config' and i + 1 < len(argv):
      index, spec = i + 1, argv[i + 1]
    elif arg.startswith('--config='):
      index, spec = i, arg.split('=', 1)[1]
    else:
      continue
    resolved = config_files.resolve(spec)
    if not Path(resolved.partition(':')[0]).is_file():
      sys.exit(f'jaxcls: --config {spec}: no such file (shipped configs: '
               f'{", ".join(config_files.shipped())})')
    argv[index] = resolved if index == i + 1 else f'--config={resolved}'
  return argv


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a mistyped `--config.FIELD=VALUE` told in one line naming the
  flag (ml_collections raises it as an AttributeError from deep inside its parser)."""
  argv = _config_argument(argv)
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    cause = e
    while isinstance(cause, BaseException) and cause.args:  # AttributeError(KeyError(text)).
      cause = cause.args[0]
    key, _, hint = str(cause).partition('\n')
    key = key.strip('\'"')
    for arg in argv[1:]:
      path = arg.split('=', 1)[0].removeprefix('--').split('.')
      if arg.startswith('--config.') and key in path[1:]:
        parent = '.'.join(path[:path.index(key, 1)])
        sys.exit(f'jaxcls: {arg}: {parent} has no field {key!r}'
                 + (f'. {hint.strip()}' if hint.strip() else '')
                 + ' (configs/default.py lists every field)')
    raise


def run():
  _define_flags()
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
