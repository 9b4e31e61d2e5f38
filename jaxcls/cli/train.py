"""Training: `python -m jaxcls.main --config configs/NAME.py --workdir DIR` (this module).

Fields of the config can be overridden on the command line, e.g.
`--config.optimizer.learning_rate=0.01 --config.train.num_epochs=5`. Running
the same command again with the same workdir resumes from its latest
checkpoint.
"""

import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags


class _QuietLibraries(logging.logging.Filter):
  """Drops Orbax's per-save INFO chatter so the progress lines stay readable."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or '/orbax/' not in record.pathname


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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # Imported here so that `--help` and flag errors come back without loading JAX.
  # pylint: disable=g-import-not-at-top
  from jaxcls.errors import ConfigError
  from jaxcls.experiment import train_and_report
  from jaxcls.training.checkpointing import CheckpointSaveError
  from jaxcls.training.loop import NonFiniteError
  from jaxcls.training.parallel import initialize_distributed
  from jaxcls.training.preemption import Preempted
  # pylint: enable=g-import-not-at-top
  initialize_distributed()
  args = flags.FLAGS
  try:
    results = train_and_report(args.config, args.workdir,
                               allow_config_change=args.allow_config_change)
  except (ConfigError, NonFiniteError, CheckpointSaveError) as e:
    sys.exit(f'jaxcls: {e}')
  except Preempted as e:
    # 128 + the signal number, as a shell reports a process the signal ended.
    print(f'jaxcls: {e}', file=sys.stderr)
    sys.exit(128 + int(getattr(signal, e.signal_name)))
  logging.info('test metrics: %s; results in %s/results.json', results['test'], args.workdir)
  print(f"test accuracy {results['test']['accuracy']:.4f} -> {args.workdir}/results.json")


def run():
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
