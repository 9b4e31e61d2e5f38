"""ResNets in flax.nnx: the torchvision family (18-152) and the CIFAR family (20-56).

Module and attribute names follow torchvision (`conv1`, `bn1`, `layer1`...,
`downsample`, `fc`) and every convolution pads explicitly as torchvision does,
so a PyTorch state dict maps onto these modules name by name and the converted
network computes the same function ('SAME' padding would shift stride-2
windows by one pixel).
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcls.models.batchnorm import BatchNorm
from jaxcls.models.interface import Classifier, StageSplit, mean_pool
from jaxcls.models.registry import register

# torchvision initialises convolutions with Kaiming-normal (fan_out) and the
# classifier with PyTorch's default Linear init, uniform(+-1/sqrt(fan_in)).
_conv_init = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')
_linear_init = nnx.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def _conv(in_ch, out_ch, kernel, stride, *, dtype, rngs):
  pad = kernel // 2
  return nnx.Conv(
      in_ch, out_ch, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
      use_bias=False, kernel_init=_conv_init, dtype=dtype, rngs=rngs)


def _batch_norm(ch, *, dtype, rngs, zero_scale=False):
  # momentum 0.9 == PyTorch's momentum 0.1 (Flax weights the old average).
  return BatchNorm(
      ch, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs,
      scale_init=nnx.initializers.zeros if zero_scale else nnx.initializers.ones)


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

  expansion = 1

  def __init__(self, in_ch: int, ch: int, stride: int, *, dtype, rngs: nnx.Rngs,
               zero_init_residual: bool = False):
    out_ch = ch * self.expansion
    self.conv1 = _conv(in_ch, ch, 3, stride, dtype=dtype, rngs=rngs)
    self.bn1 = _batch_norm(ch, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(ch, out_ch, 3, 1, dtype=dtype, rngs=rngs)
    self.bn2 = _batch_norm(out_ch, dtype=dtype, rngs=rngs, zero_scale=zero_init_residual)
    self.downsample = _downsample(in_ch, out_ch, stride, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    residual = x if self.downsample is None else self.downsample(x)
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return nnx.relu(y + residual)


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (strided, torchvision's "v1.5") -> 1x1 with 4x expansion."""

  expansion = 4

  def __init__(self, in_ch: int, ch: int, stride: int, *, dtype, rngs: nnx.Rngs,
               zero_init_residual: bool = False):
    out_ch = ch * self.expansion
    self.conv1 = _conv(in_ch, ch, 1, 1, dtype=dtype, rngs=rngs)
    self.bn1 = _batch_norm(ch, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(ch, ch, 3, stride, dtype=dtype, rngs=rngs)
    self.bn2 = _batch_norm(ch, dtype=dtype, rngs=rngs)
    self.conv3 = _conv(ch, out_ch, 1, 1, dtype=dtype, rngs=rngs)
    self.bn3 = _batch_norm(out_ch, dtype=dtype, rngs=rngs, zero_scale=zero_init_residual)
    self.downsample = _downsample(in_ch, out_ch, stride, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    residual = x if self.downsample is None else self.downsample(x)
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = nnx.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return nnx.relu(y + residual)


def _downsample(in_ch, out_ch, stride, *, dtype, rngs):
  if stride == 1 and in_ch == out_ch:
    return None
  return nnx.Sequential(
      _conv(in_ch, out_ch, 1, stride, dtype=dtype, rngs=rngs),
      _batch_norm(out_ch, dtype=dtype, rngs=rngs))


class ResNet(Classifier):
  """A ResNet; `stem='imagenet'` is torchvision's, `stem='cifar'` is He et al.'s CIFAR net.

  The ImageNet stem is a 7x7/2 convolution and a 3x3/2 max-pool; the CIFAR stem
  a single 3x3/1 convolution, which keeps 32x32 inputs at full resolution for
  the first stage. Stage i has `width * 2**i` channels (times the block's
  expansion).
  """

  head_name = 'fc'

  def __init__(self, stage_sizes: Sequence[int], block_cls: type[nnx.Module], *,
               num_classes: int, width: int = 64, stem: str = 'imagenet',
               dtype: str | jnp.dtype = 'float32', zero_init_residual: bool = False,
               rngs: nnx.Rngs):
    if stem not in ('imagenet', 'cifar'):
      raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
    dtype = jnp.dtype(dtype)
    self.stem = stem
    if stem == 'imagenet':
      self.conv1 = _conv(3, width, 7, 2, dtype=dtype, rngs=rngs)
    else:
      self.conv1 = _conv(3, width, 3, 1, dtype=dtype, rngs=rngs)
    self.bn1 = _batch_norm(width, dtype=dtype, rngs=rngs)
    in_ch = width
    self.num_stages = len(stage_sizes)
    for i, num_blocks in enumerate(stage_sizes):
      blocks = []
      for j in range(num_blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(block_cls(in_ch, width * 2**i, stride, dtype=dtype, rngs=rngs,
                                zero_init_residual=zero_init_residual))
        in_ch = width * 2**i * block_cls.expansion
      setattr(self, f'layer{i + 1}', nnx.List(blocks))
    self.num_features = in_ch
    self.fc = nnx.Linear(in_ch, num_classes, kernel_init=_linear_init, dtype=dtype, rngs=rngs)

  @property
  def group_patterns(self) -> tuple[tuple[str, str], ...]:
    """Parameter groups from input to output, by module path: stem, stage1..N, head."""
    stages = tuple((f'stage{i}', rf'layer{i}(/|$)') for i in range(1, self.num_stages + 1))
    return (('stem', r'(conv1|bn1)(/|$)'),) + stages + (('head', r'fc(/|$)'),)

  def feature_map(self, x: jax.Array) -> jax.Array:
    """Images [batch, height, width, 3] -> the last stage's activations, before pooling."""
    x = nnx.relu(self.bn1(self.conv1(x)))
    if self.stem == 'imagenet':
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i in range(self.num_stages):
      for block in getattr(self, f'layer{i + 1}'):
        x = block(x)
    return x

  def features(self, x: jax.Array) -> jax.Array:
    """Images [batch, height, width, 3] -> pooled features [batch, num_features]."""
    return mean_pool(self.feature_map(x))

  def last_stage(self, x: jax.Array) -> StageSplit:
    return self.feature_map(x), mean_pool


_IMAGENET = {
    'resnet18': ([2, 2, 2, 2], BasicBlock),
    'resnet34': ([3, 4, 6, 3], BasicBlock),
    'resnet50': ([3, 4, 6, 3], Bottleneck),
    'resnet101': ([3, 4, 23, 3], Bottleneck),
    'resnet152': ([3, 8, 36, 3], Bottleneck),
}
# He et al. 2016, sec. 4.2: 6n+2 layers in three stages of n basic blocks.
_CIFAR = {'cifar_resnet20': 3, 'cifar_resnet32': 5, 'cifar_resnet56': 9}

for _name, (_sizes, _block) in _IMAGENET.items():
  register(_name)(functools.partial(ResNet, _sizes, _block, stem='imagenet'))
for _name, _n in _CIFAR.items():
  register(_name)(functools.partial(ResNet, [_n] * 3, BasicBlock, stem='cifar', width=16))
