"""The same network and schedule from ImageNet weights and from scratch.

    jaxcls ablate pretrained_vs_scratch [--dataset tfds:cifar10] [--epochs 6]

EfficientNet-Lite0 (configs/finetune_digits.py rows 'full' and 'scratch': the
real ImageNet weights, installed offline, vs random initialisation), fully
trained; writes ROOT/pretrained_vs_scratch.md.
"""

import sys

from jaxcls.launch.ablations.common import run_suite

BASE = 'configs/finetune_digits.py'


def sweeps(args):
  del args
  return {'init': {'grid': {'init': {'pretrained': {'config_arg': 'full'},
                                     'scratch': {'config_arg': 'scratch'}}}}}


if __name__ == '__main__':
  sys.exit(run_suite(__doc__, 'pretrained_vs_scratch', BASE, sweeps))
