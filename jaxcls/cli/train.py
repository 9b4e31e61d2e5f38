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

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file: a Python file whose get_config() returns a ConfigDict.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Continue the run in --workdir even though its saved config '
    'differs from this one (by default such a rerun is refused).')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(logging.logging.Filter):
  """Drops Orbax's per-save INFO chatter so the progress lines stay readable."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # Imported here so that `--help` and flag errors come back without loading JAX.
  from jaxcls.training import parallel, loop as train  # pylint: disable=g-import-not-at-top
  from jaxcls.training.checkpointing import CheckpointSaveError  # pylint: disable=g-import-not-at-top
  from jaxcls.config import ConfigError  # pylint: disable=g-import-not-at-top
  from jaxcls.training.preemption import Preempted  # pylint: disable=g-import-not-at-top
  parallel.initialize_distributed()
  try:
    results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                       allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except (ConfigError, train.NonFiniteError, CheckpointSaveError) as e:
    sys.exit(f'jaxcls: {e}')
  except Preempted as e:
    # 128 + the signal number, as a shell reports a process the signal ended.
    print(f'jaxcls: {e}', file=sys.stderr)
    sys.exit(128 + int(getattr(signal, e.signal_name)))
  logging.info('test metrics: %s; results in %s/results.json', results['test'], _WORKDIR.value)
  print(f"test accuracy {results['test']['accuracy']:.4f} -> {_WORKDIR.value}/results.json")


def run():
  app.run(main)


if __name__ == '__main__':
  run()
