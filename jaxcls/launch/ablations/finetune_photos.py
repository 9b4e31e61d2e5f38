"""Fine-tuning strategies on real photos: full / partial / feature extraction / gradual / scratch.

    jaxcls ablate finetune_photos [--root runs/ablations/finetune_photos]
        [--dataset folder:PATH] [--epochs 3] [--parallel 1] [--rows full,partial,...]

The rows of configs/finetune_photos.py: the real ImageNet EfficientNet-Lite0 by
its tag at 224x224, default config otherwise, on the ants-vs-bees photos of
../shared/data (or --dataset); one trial each; writes
ROOT/finetune_photos.md with the table (sorted by val accuracy).
"""

import sys

from jaxcls.launch.ablations.common import run_suite

BASE = 'configs/finetune_photos.py'
ROWS = ('full', 'partial', 'feature_extraction', 'gradual', 'scratch')


def add_flags(parser):
  parser.add_argument('--rows', default=','.join(ROWS),
                      help='rows of configs/finetune_photos.py (also: mlp_probe, discriminative)')


def sweeps(args):
  return {'strategies': {'grid': {'config_arg': args.rows.split(',')}}}


if __name__ == '__main__':
  sys.exit(run_suite(__doc__, 'finetune_photos', BASE, sweeps, add_flags))
