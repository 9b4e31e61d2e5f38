"""Grid search vs random search at the same budget: learning rate x weight decay.

    jaxcls ablate hparam_search [--budget 9] [--dataset tfds:cifar10] [--epochs 5]

Grid: sqrt(budget) learning rates x sqrt(budget) weight decays, log-spaced over
the same ranges the random search draws from log-uniformly (`--budget` trials,
seed `--seed`). Writes both tables and the best trial of each to
ROOT/hparam_search.md.
"""

import math
import sys

from jaxcls.launch.ablations.common import run_suite

BASE = 'configs/default.py'
LEARNING_RATE = (0.01, 0.4)
WEIGHT_DECAY = (1e-5, 1e-2)


def add_flags(parser):
  parser.add_argument('--budget', type=int, default=9, help='trials per search (a square)')
  parser.add_argument('--seed', type=int, default=0, help='of the random search')


def _log_spaced(low, high, count):
  if count == 1:
    return [math.sqrt(low * high)]
  return [float(f'{low * (high / low) ** (i / (count - 1)):.3g}') for i in range(count)]


def sweeps(args):
  side = math.isqrt(args.budget)
  if side * side != args.budget:
    raise SystemExit(f'--budget {args.budget}: must be a square (the grid is side x side)')
  return {
      'grid': {'grid': {'optimizer.learning_rate': _log_spaced(*LEARNING_RATE, side),
                        'optimizer.weight_decay': _log_spaced(*WEIGHT_DECAY, side)}},
      'random': {'random': {'optimizer.learning_rate': ('log_uniform', *LEARNING_RATE),
                            'optimizer.weight_decay': ('log_uniform', *WEIGHT_DECAY)},
                 'num_trials': args.budget, 'seed': args.seed}}


if __name__ == '__main__':
  sys.exit(run_suite(__doc__, 'hparam_search', BASE, sweeps, add_flags))
