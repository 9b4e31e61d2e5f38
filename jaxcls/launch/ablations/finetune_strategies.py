"""Fine-tuning strategies on one pretrained backbone: full / partial / feature extraction / gradual.

    jaxcls ablate finetune_strategies [--root runs/ablations/finetune_strategies]
        [--dataset tfds:cifar10] [--epochs 6] [--parallel 2] [--rows full,partial,...]

The rows of configs/finetune_digits.py (the real ImageNet EfficientNet-Lite0,
installed offline, fine-tuned at 32x32), one trial each; writes
ROOT/finetune_strategies.md with the table (sorted by val accuracy).
"""

import sys

from jaxcls.launch.ablations.common import run_suite

BASE = 'configs/finetune_digits.py'
ROWS = ('full', 'partial', 'feature_extraction', 'gradual')


def add_flags(parser):
  parser.add_argument('--rows', default=','.join(ROWS),
                      help='rows of configs/finetune_digits.py (also: mlp_probe, '
                      'discriminative, scratch)')


def sweeps(args):
  return {'strategies': {'grid': {'config_arg': args.rows.split(',')}}}


if __name__ == '__main__':
  sys.exit(run_suite(__doc__, 'finetune_strategies', BASE, sweeps, add_flags))
