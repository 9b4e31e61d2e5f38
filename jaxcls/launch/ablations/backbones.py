"""Backbones side by side, same data and schedule: ResNet-18, ResNet-50, VGG-16, ConvNeXt-T.

    jaxcls ablate backbones [--dataset tfds:cifar10] [--epochs 10] [--width 16]

From scratch at 32x32 by default; `--width` narrows every family alike (0: the
architectures' own widths, for a GPU). VGG-16 uses a global-pooling head.
ConvNeXt trains with AdamW (its recipe), the others with SGD.
Writes ROOT/backbones.md.
"""

import sys

from jaxcls.launch.ablations.common import run_suite

BASE = 'configs/default.py'


def add_flags(parser):
  parser.add_argument('--width', type=int, default=16,
                      help='model.width of every backbone (0: their own)')


def sweeps(args):
  width = {'model.width': args.width}
  adamw = {'optimizer.name': 'adamw', 'optimizer.learning_rate': 1e-3,
           'optimizer.weight_decay': 0.05}
  return {'backbones': {'grid': {'backbone': {
      'resnet18': {'model.name': 'resnet18', **width},
      'resnet50': {'model.name': 'resnet50', **width},
      'vgg16': {'model.name': 'vgg16', 'model.head': 'linear', **width,
                'optimizer.learning_rate': 0.02},
      'convnext_tiny': {'model.name': 'convnext_tiny', **width, **adamw}}}}}


if __name__ == '__main__':
  sys.exit(run_suite(__doc__, 'backbones', BASE, sweeps, add_flags))
