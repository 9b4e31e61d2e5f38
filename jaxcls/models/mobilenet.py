"""MobileNetV2 (Sandler et al. 2018) in flax.nnx, with its width multiplier.

Module names and indices follow torchvision's `torchvision.models.mobilenetv2`
state dict (`features.0` the stem, `features.{1..17}.conv.{k}` the inverted
residual blocks, `features.18` the 1x1 head convolution, `classifier.1` the
Linear), so its checkpoints (`mobilenet_v2-b0353104.pth`,
`mobilenet_v2-7ebf99e0.pth`) load name by name; timm's `mobilenetv2_100` keys
(`conv_stem`, `bn1`, `blocks.{stage}.{j}.conv_pw/conv_dw/conv_pwl...`,
`conv_head`, `bn2`, `classifier`) are renamed to them (`checkpoint_layouts`).
Convolutions pad symmetrically, (k - 1) // 2 per side, as both do.
"""

import re


import jax
import jax.numpy as jnp
from flax import nnx

from jaxcls.models.batchnorm import BatchNorm
from jaxcls.models.efficientnet import (ConvStack, conv, conv_norm_act, dropout_rngs_for,
                                        make_divisible)
from jaxcls.models.interface import Classifier, StageSplit, mean_pool
from jaxcls.models.registry import register

# torchvision's MobileNetV2 init of the classifier: normal(0, 0.01), zero bias.
_linear_init = nnx.initializers.normal(0.01)
# (expand ratio t, channels c, blocks n, first stride s): torchvision's inverted_residual_setting.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))
_NORM = dict(padding='symmetric', bn_epsilon=1e-5, bn_momentum=0.9)  # PyTorch's momentum 0.1.


class InvertedResidual(nnx.Module):
  """torchvision's block: `conv` = [1x1 expansion], 3x3 depthwise, 1x1 projection, BatchNorm."""

  def __init__(self, in_ch, out_ch, stride, expand_ratio, *, dtype, rngs):
    hidden = int(round(in_ch * expand_ratio))
    layers = []
    if expand_ratio != 1:
      layers.append(conv_norm_act(in_ch, hidden, 1, activation='relu6', dtype=dtype, rngs=rngs,
                                  **_NORM))
    layers += [
        conv_norm_act(hidden, hidden, 3, stride, groups=hidden, activation='relu6', dtype=dtype,
                      rngs=rngs, **_NORM),
        conv(hidden, out_ch, 1, padding='symmetric', dtype=dtype, rngs=rngs),
        BatchNorm(out_ch, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs),
    ]
    self.conv = nnx.Sequential(*layers)
    self.use_residual = stride == 1 and in_ch == out_ch

  def __call__(self, x):
    y = self.conv(x)
    return x + y if self.use_residual else y


class MobileNetV2(Classifier):
  """MobileNetV2: a 3x3/2 stem, 17 inverted residual blocks in 7 stages, a 1x1 conv to 1280.

  Args:
    num_classes: outputs of the classifier.
    width_mult: torchvision's width multiplier: every layer's channels times
      it, rounded to multiples of 8; the head conv keeps 1280 when it is < 1.
    width: config.model.width: the channels of the stem; sets `width_mult` to
      width / 32. 0: `width_mult`.
    dropout_rate: dropout before the Linear in train mode (`classifier.0`).

  `features(x)` is the pooled output of the 1x1 head convolution and
  `__call__(x)` the Linear of it (after dropout in train mode).
  """

  head_name = 'classifier.1'

  def __init__(self, *, num_classes: int, width_mult: float = 1.0, width: int = 0,
               dropout_rate: float = 0.2, dtype: str | jnp.dtype = 'float32', rngs: nnx.Rngs):
    if width:
      width_mult = width / 32
    if width_mult <= 0:
      raise ValueError(f'width_mult must be > 0, got {width_mult}')
    dtype = jnp.dtype(dtype)
    in_ch = make_divisible(32 * width_mult)
    head_ch = make_divisible(1280 * max(1.0, width_mult))
    layers = [conv_norm_act(3, in_ch, 3, 2, activation='relu6', dtype=dtype, rngs=rngs, **_NORM)]
    for expand_ratio, channels, repeats, stride in STAGES:
      out_ch = make_divisible(channels * width_mult)
      for j in range(repeats):
        layers.append(InvertedResidual(in_ch, out_ch, stride if j == 0 else 1, expand_ratio,
                                       dtype=dtype, rngs=rngs))
        in_ch = out_ch
    layers.append(conv_norm_act(in_ch, head_ch, 1, activation='relu6', dtype=dtype, rngs=rngs,
                                **_NORM))
    self.features = ConvStack(layers)
    dropout_rngs = dropout_rngs_for(rngs, dropout_rate)
    self.classifier = nnx.Sequential(
        nnx.Dropout(dropout_rate, rngs=dropout_rngs),
        nnx.Linear(head_ch, num_classes, kernel_init=_linear_init, dtype=dtype, rngs=rngs))
    self.num_features = head_ch

  @property
  def group_patterns(self):
    return _group_patterns()

  def last_stage(self, x: jax.Array) -> StageSplit:
    return self.features.feature_map(x), mean_pool  # The 1x1 head convolution's output.

  def classify(self, features: jax.Array) -> jax.Array:
    return self.classifier(features)  # Dropout, then the Linear.

  @property
  def checkpoint_layouts(self):
    """Layout name -> function renaming that layout's keys to torchvision's (ours)."""
    return {'timm': _from_timm}


# timm's block parts -> their index in our `conv` Sequential: the first stage's
# DepthwiseSeparableConv (no expansion), then the InvertedResidual blocks.
_TIMM_DS = {'conv_dw': '0.0', 'bn1': '0.1', 'conv_pw': '1', 'bn2': '2'}
_TIMM_IR = {'conv_pw': '0.0', 'bn1': '0.1', 'conv_dw': '1.0', 'bn2': '1.1', 'conv_pwl': '2',
            'bn3': '3'}
_FIRST_BLOCK = [1 + sum(n for _, _, n, _ in STAGES[:i]) for i in range(len(STAGES))]
_HEAD = 1 + sum(n for _, _, n, _ in STAGES)


def _from_timm(key: str) -> str:
  match = re.match(r'blocks\.(\d+)\.(\d+)\.(\w+)\.(\w+)$', key)
  if match:
    stage, index, part, leaf = int(match[1]), int(match[2]), match[3], match[4]
    parts = _TIMM_DS if stage == 0 else _TIMM_IR
    if stage < len(STAGES) and index < STAGES[stage][2] and part in parts:
      return f'features.{_FIRST_BLOCK[stage] + index}.conv.{parts[part]}.{leaf}'
    return f'<not a timm mobilenetv2 key> {key}'
  top = {'conv_stem.': 'features.0.0.', 'bn1.': 'features.0.1.',
         'conv_head.': f'features.{_HEAD}.0.', 'bn2.': f'features.{_HEAD}.1.',
         'classifier.': 'classifier.1.'}
  for prefix, canonical in top.items():
    if key.startswith(prefix):
      return canonical + key[len(prefix):]
  return f'<not a timm mobilenetv2 key> {key}'


def _group_patterns():
  """`features.0` stem, the blocks of each of the 7 stages, `features.18` conv_head, head."""
  groups, first = [('stem', r'features/layers/0(/|$)')], 1
  for i, (_, _, repeats, _) in enumerate(STAGES, start=1):
    indices = '|'.join(str(k) for k in range(first, first + repeats))
    groups.append((f'stage{i}', rf'features/layers/({indices})(/|$)'))
    first += repeats
  groups.append(('conv_head', rf'features/layers/{first}(/|$)'))
  groups.append(('head', r'classifier/layers/1(/|$)'))
  return tuple(groups)


register('mobilenet_v2')(MobileNetV2)
