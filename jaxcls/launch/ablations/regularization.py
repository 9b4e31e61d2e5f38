"""A regularisation ladder, each rung adding to the one before:
none -> +balancing -> +strong augmentation -> +Mixup/CutMix -> +pretrained.

    jaxcls ablate regularization [--dataset folder:PATH] [--epochs 8] [--parallel 2]

On EfficientNet-Lite0 at 32x32 (configs/digits_efficientnet_lite0.py): the
first four rungs from scratch, the last from the real ImageNet weights
(installed offline). 'none' switches the default crop padding off;
'+balancing' samples every class equally often (data.sampler='balanced');
'+strong augmentation' adds random affine warps, colour jitter and random
erasing; '+Mixup/CutMix' mixes batches (mixup.*). Writes ROOT/regularization.md.
"""

import sys

from jaxcls.launch.ablations.common import run_suite

from jaxcls.config import default_config  # pylint: disable=g-import-not-at-top

BASE = 'configs/digits_efficientnet_lite0.py'

BALANCED = {'data.sampler': 'balanced'}
STRONG_AUGMENTATION = {
    'data.augment.random_crop_padding': 4, 'data.augment.affine_degrees': 15.0,
    'data.augment.affine_translate': 0.1, 'data.augment.affine_scale': (0.9, 1.1),
    'data.augment.brightness': 0.3, 'data.augment.contrast': 0.3,
    'data.augment.erasing_prob': 0.25}
MIXUP = {'mixup.mixup_alpha': 0.2, 'mixup.cutmix_alpha': 1.0}


def rungs() -> dict:
  """{rung name: overrides}, cumulative; the Mixup rung only where config.mixup exists."""
  ladder = {'0_none': {'config_arg': 'scratch', 'data.augment.random_crop_padding': 0}}
  current = dict(ladder['0_none'])
  steps = [('1_balanced', BALANCED), ('2_strong_aug', STRONG_AUGMENTATION)]
  if 'mixup' in default_config():
    steps.append(('3_mixup_cutmix', MIXUP))
  else:
    print('[regularization] skipping the Mixup/CutMix rung: configs/default.py has no mixup.* '
          'fields in this version of jaxcls', flush=True)
  steps.append(('4_pretrained', {'config_arg': 'pretrained'}))
  for name, overrides in steps:
    current = {**current, **overrides}
    ladder[name] = dict(current)
  return ladder


def sweeps(args):
  del args
  return {'ladder': {'grid': {'rung': rungs()}}}


if __name__ == '__main__':
  sys.exit(run_suite(__doc__, 'regularization', BASE, sweeps))
