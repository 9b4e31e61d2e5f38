"""VGG in flax.nnx: torchvision's VGG 11/13/16/19, with and without BatchNorm.

The layout is torchvision's, index for index, so a PyTorch state dict maps
onto these modules by name: `features` is a list in which every position of
torchvision's `nn.Sequential` (conv, [bn], relu, ..., maxpool) holds a module,
the parameter-free ReLU and max-pool ones included, so that `features.{i}`
names the same layer in both; `classifier.{0,3,6}` are the three Linear
layers. The 7x7 pooled map is flattened in PyTorch's NCHW order, so the first
Linear layer's converted weights see their inputs in the order they were
trained on.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcls.models.batchnorm import BatchNorm
from jaxcls.models.interface import Classifier, StageSplit, mean_pool
from jaxcls.models.registry import register

# torchvision initialises convolutions with Kaiming-normal (fan_out), Linear
# layers with N(0, 0.01) and every bias with zeros.
_conv_init = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')
_linear_init = nnx.initializers.normal(0.01)

# torchvision's `cfgs`: output channels of each 3x3 convolution (at width 64),
# 'M' a 2x2 max-pool.
_CFGS = {
    'A': [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
    'B': [64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
    'D': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'],
    'E': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512,
          512, 512, 'M'],
}
_POOLED_SIZE = 7  # torchvision's AdaptiveAvgPool2d((7, 7)).


class ReLU(nnx.Module):
  """Parameter-free; holds its place in `features`/`classifier` so indices match torchvision."""

  def __call__(self, x):
    return nnx.relu(x)


class MaxPool(nnx.Module):
  """2x2, stride 2, no padding: torchvision's nn.MaxPool2d(2, 2) (floor mode)."""

  def __call__(self, x):
    return nnx.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')


def adaptive_avg_pool(x: jax.Array, output_size: int) -> jax.Array:
  """PyTorch's AdaptiveAvgPool2d on NHWC: output cell i averages input rows
  floor(i * H / out) .. ceil((i + 1) * H / out) - 1 (likewise for columns), so
  the windows overlap when H is not a multiple of out and repeat when H < out.
  """
  _, height, width, _ = x.shape
  if height == width == output_size:
    return x
  if height % output_size == 0 and width % output_size == 0:
    b, _, _, c = x.shape
    x = x.reshape(b, output_size, height // output_size, output_size, width // output_size, c)
    return x.mean(axis=(2, 4))
  rows, cols = _pool_matrix(height, output_size), _pool_matrix(width, output_size)
  return jnp.einsum('ih,bhwc,jw->bijc', rows.astype(x.dtype), x, cols.astype(x.dtype),
                    precision=jax.lax.Precision.HIGHEST)


def _pool_matrix(size: int, output_size: int) -> np.ndarray:
  """[output_size, size]: row i averages torch's window i."""
  matrix = np.zeros((output_size, size), np.float32)
  for i in range(output_size):
    start, end = (i * size) // output_size, -((-(i + 1) * size) // output_size)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


class Features(nnx.Module):
  """The convolutional stack and its pooling; `layers[i]` is torchvision's `features[i]`.

  The list is held as `layers`, the name the checkpoint converter drops (as for
  nnx.Sequential), so `features.layers.3.kernel` reads `features.3.weight`.
  """

  def __init__(self, layers: list[nnx.Module], pooling: str):
    self.layers = nnx.List(layers)
    self.pooling = pooling

  def last_stage(self, x: jax.Array) -> StageSplit:
    """-> (the activations after the last ReLU, their pooled features).

    The stage ends there, before the last max-pool (features.29 in
    torchvision's VGG16, the layer Grad-CAM's authors used): one more pool
    would halve the map's resolution for nothing.
    """
    layers = list(self.layers)
    last_relu = max(i for i, layer in enumerate(layers) if isinstance(layer, ReLU))
    for layer in layers[:last_relu + 1]:
      x = layer(x)

    def to_features(a):
      for layer in layers[last_relu + 1:]:
        a = layer(a)
      return self.pool(a)

    return x, to_features

  def pool(self, x: jax.Array) -> jax.Array:
    if self.pooling == 'gap':
      return mean_pool(x)
    x = adaptive_avg_pool(x, _POOLED_SIZE)
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # PyTorch's flatten order.

  def __call__(self, x: jax.Array) -> jax.Array:
    activations, to_features = self.last_stage(x)
    return to_features(activations)


class VGG(Classifier):
  """A VGG; `cfg` is one of torchvision's 'A' (11), 'B' (13), 'D' (16), 'E' (19).

  Heads:
    head='classifier' (torchvision's): AdaptiveAvgPool2d((7, 7)), flatten in
      NCHW order, then `classifier` = Linear(512*7*7, 4096), ReLU, Dropout,
      Linear(4096, 4096), ReLU, Dropout, Linear(4096, num_classes).
      `features(x)` is the flattened pooled map [batch, 512*7*7] and
      `head_name` is 'classifier': the head is everything after `features`, so
      `model(x) == model.classifier(model.features(x))` as `fc(features(x))`
      is for the ResNets, and `load_state_dict(..., keep_head=False)`
      re-initialises all three Linear layers (and skips the Dropout RNG
      state). To keep the pretrained 4096-wide layers and replace only the
      last one, as torchvision users do, load with keep_head=True into a
      1000-class model, then set `model.classifier.layers[6] =
      nnx.Linear(4096 * width // 64, num_classes, rngs=...)`.
    head='gap': global average pooling and a single Linear `fc`
      (512 -> num_classes), as VGGs are commonly trained on 32x32 images;
      `features(x)` is [batch, 512] and `head_name` is 'fc'. There is no
      `classifier` and no dropout; a torchvision checkpoint loads as layout
      'torchvision_features' (its classifier dropped) with keep_head=False.

  `width` is the first stage's channel count (torchvision: 64); every
  convolution and the classifier's hidden width (4096 at width 64) scale with
  it. `dropout_rate` is the classifier's dropout; it draws its masks from a
  'dropout' RNG stream kept in the model (`rngs.dropout` if given, else a key
  split off `rngs.params`), whose state is a non-parameter variable that the
  train step carries in `model_state`. dropout_rate=0.0 builds the model
  without that RNG state. Known limit: `jaxcls.pretrained.load_state_dict`
  counts that RNG state as variables to fill, so keep_head=True fails (and
  keep_head=None skips the whole classifier) unless dropout_rate=0.0.
  """

  def __init__(self, cfg: str, *, batch_norm: bool, num_classes: int, width: int = 64,
               head: str = 'classifier', dropout_rate: float = 0.5,
               dtype: str | jnp.dtype = 'float32', rngs: nnx.Rngs):
    if head not in ('classifier', 'gap'):
      raise ValueError(f"head must be 'classifier' or 'gap', got {head!r}")
    if width < 1:
      raise ValueError(f'width must be positive, got {width}')
    dtype = jnp.dtype(dtype)
    layers, in_ch = [], 3
    block_layers = [[]]  # Indices into `features.layers` of each block (ending in a max-pool).
    for v in _CFGS[cfg]:
      if v == 'M':
        block_layers[-1].append(len(layers))
        layers.append(MaxPool())
        block_layers.append([])
        continue
      block_layers[-1].extend(range(len(layers), len(layers) + (3 if batch_norm else 2)))
      out_ch = v * width // 64
      layers.append(nnx.Conv(in_ch, out_ch, (3, 3), padding=((1, 1), (1, 1)),
                             kernel_init=_conv_init, bias_init=nnx.initializers.zeros,
                             dtype=dtype, rngs=rngs))
      if batch_norm:
        # momentum 0.9 == PyTorch's momentum 0.1 (Flax weights the old average).
        layers.append(BatchNorm(out_ch, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs))
      layers.append(ReLU())
      in_ch = out_ch
    self.block_layers = tuple(tuple(indices) for indices in block_layers if indices)
    self.head_kind = head
    self.features = Features(layers, pooling='gap' if head == 'gap' else 'adaptive')
    linear = functools.partial(nnx.Linear, kernel_init=_linear_init,
                               bias_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs)
    if head == 'gap':
      self.num_features = in_ch
      self.fc = linear(in_ch, num_classes)
      return
    hidden = 4096 * width // 64
    self.num_features = in_ch * _POOLED_SIZE**2
    self.classifier = nnx.Sequential(
        linear(self.num_features, hidden), ReLU(), _dropout(dropout_rate, rngs),
        linear(hidden, hidden), ReLU(), _dropout(dropout_rate, rngs),
        linear(hidden, num_classes))

  @property
  def head_name(self) -> str:
    return 'fc' if self.head_kind == 'gap' else 'classifier'

  @property
  def group_patterns(self):
    """Parameter groups from input to output: block1..block5 (each ending in its
    max-pool), then the head (torchvision's `classifier`, or `fc` with head='gap')."""
    return tuple((f'block{i + 1}', rf'features/layers/({"|".join(map(str, indices))})(/|$)')
                 for i, indices in enumerate(self.block_layers)) + (
                     ('head', r'(classifier|fc)(/|$)'),)

  def last_stage(self, x: jax.Array) -> StageSplit:
    return self.features.last_stage(x)

  @property
  def checkpoint_layouts(self):
    if self.head_name == 'fc':  # A torchvision checkpoint's backbone, its classifier dropped.
      return {'torchvision_features': lambda k: None if k.startswith('classifier.') else k}
    return {}


def _dropout(rate, rngs):
  if not rate:
    return nnx.Dropout(0.0)
  # create_model's Rngs has only a 'params' stream: derive the dropout stream from it.
  stream = rngs if 'dropout' in rngs else nnx.Rngs(dropout=rngs.params())
  return nnx.Dropout(rate, rngs=stream)


_DEPTHS = {'vgg11': 'A', 'vgg13': 'B', 'vgg16': 'D', 'vgg19': 'E'}

for _name, _cfg in _DEPTHS.items():
  register(_name)(functools.partial(VGG, _cfg, batch_norm=False))
  register(f'{_name}_bn')(functools.partial(VGG, _cfg, batch_norm=True))
