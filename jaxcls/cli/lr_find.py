"""Learning-rate range test: `jaxcls lr-find --config FILE[:ROW] --workdir DIR` (this module).

Trains steps of the config's run as it would train them (model, pretrained
weights, the fine-tuning strategy's first phase with the frozen groups frozen,
per-group rates, data, augmentation, mixing), the learning rate growing
exponentially from --start_lr to --end_lr over --num_steps steps, until the
running average of the loss exceeds --divergence times its best. Prints the suggested rate
and the rule that chose it, and writes DIR/lr_find.png (loss against rate) and
DIR/lr_find.json; the trained weights are thrown away (no checkpoint). Fields
of the config can be overridden as for training, e.g. `--config.train.batch_size=32`.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags
from ml_collections import config_flags

from jaxcls.cli.train import begin, parse_flags
# pylint: enable=g-import-not-at-top,wrong-import-position

PROGRAM = 'jaxcls lr-find'


def _define_flags():
  """Defined by `run` alone, so that importing this module defines no flag."""
  config_flags.DEFINE_config_file(
      'config', None, 'Config file: a Python file whose get_config() returns a ConfigDict.',
      lock_config=True)
  flags.DEFINE_string('workdir', None, 'Directory for lr_find.png and lr_find.json.')
  flags.DEFINE_float('start_lr', 1e-7, 'Learning rate of the first step.')
  flags.DEFINE_float('end_lr', 10.0, 'Learning rate of the last step, if the loss has not '
                     'diverged before.')
  flags.DEFINE_integer('num_steps', 200, 'Steps of the sweep (it stops earlier on divergence).')
  flags.DEFINE_float('divergence', 4.0, 'Stop once the running average of the loss exceeds '
                     'this many times its best.')
  flags.DEFINE_float('smoothing', None, 'Weight of the past in the exponential moving '
                     'average of the loss (default: 0.95 for 200 steps or more, less for a '
                     'shorter sweep, so the average spans about a tenth of it).')
  flags.DEFINE_enum('rule', 'steepest', ['steepest', 'minimum'], 'How the suggestion is '
                    'chosen: steepest descent of the smoothed loss before its minimum, or the '
                    "minimum's rate / 10.")
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  begin(argv)
  # pylint: disable=g-import-not-at-top
  from jaxcls.errors import ConfigError
  from jaxcls.experiment import LR_FIND_JSON, LR_FIND_PNG, find_learning_rate
  from jaxcls.training import lr_find
  from jaxcls.training.parallel import initialize_distributed
  # pylint: enable=g-import-not-at-top
  args = flags.FLAGS
  sweep = dict(start_lr=args.start_lr, end_lr=args.end_lr, num_steps=args.num_steps,
               divergence=args.divergence, smoothing=args.smoothing, rule=args.rule)
  problems = lr_find.argument_errors(**sweep)
  if problems:  # Before anything is built: the flags are the user's to fix.
    sys.exit(f'{PROGRAM}: --{"; --".join(problems)}')
  initialize_distributed()
  try:
    test = find_learning_rate(args.config, args.workdir, **sweep)
  except (ConfigError, lr_find.RangeTestError) as e:
    sys.exit(f'{PROGRAM}: {e}')
  others = ', '.join(f'{rule} {rate:.2g}' for rule, rate in test.suggestions.items()
                     if rule != test.rule)
  print(f'{len(test.losses)} steps, {test.learning_rates[0]:.2g} -> '
        f'{test.learning_rates[-1]:.2g}: {test.stopped}')
  print(f'suggested learning rate {test.suggestion:.2g} ({test.rule}: '
        f'{lr_find.RULES[test.rule]}; {others})')
  if not test.diverged:
    print(f'the loss did not diverge up to --end_lr={args.end_lr:g}: its smallest value may lie '
          'beyond the sweep (the minimum rule then means little); a larger --end_lr tells')
  print(f'-> {args.workdir}/{LR_FIND_PNG}, {args.workdir}/{LR_FIND_JSON}')


def run():
  _define_flags()
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
