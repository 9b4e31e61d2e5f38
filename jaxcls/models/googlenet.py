"""GoogLeNet (Inception v1, Szegedy et al. 2014) in flax.nnx, in torchvision's layout.

Module and attribute names are torchvision's (`conv1`, `inception3a.branch2.1`,
`aux1.fc1`, `fc`...), and every convolution and max-pool pads as torchvision's
does, so a torchvision state dict maps onto these modules name by name and the
converted network computes the same function. Two details matter for that:

- torchvision's max-pools use `ceil_mode=True`: a last, partial window is
  kept where the floor rule would drop it (112 -> 56 rather than 55 at 224
  px; 32 -> 16 rather than 15 at 64). `max_pool` pads the bottom and right
  with -inf to get PyTorch's output size.
- `branch3` is a 1x1 then a **3x3** convolution, not the paper's 5x5: a known
  deviation of torchvision's port (pytorch/vision#906), kept because its
  ImageNet weights were trained that way.

The two auxiliary classifiers (`aux1` on inception4a's output, `aux2` on
inception4d's) exist only with `aux_logits=True`, and run only while they are
in train mode (`logits_and_aux`): evaluation, prediction and a frozen `aux`
group never compute them. torchvision's pretrained checkpoint carries them
(untrained): a model without them drops those keys (`checkpoint_layouts`).
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcls.models.batchnorm import BatchNorm
from jaxcls.models.efficientnet import dropout_rngs_for
from jaxcls.models.interface import Classifier, StageSplit, mean_pool
from jaxcls.models.registry import register
from jaxcls.models.vgg import adaptive_avg_pool

# torchvision's `_initialize_weights`: convolution and Linear weights from
# trunc_normal(std=0.01, a=-2, b=2) (bounds 200 standard deviations out: a
# normal), BatchNorm scale 1 and bias 0, Linear biases PyTorch's default
# uniform(+-1/sqrt(fan_in)).
_weight_init = nnx.initializers.normal(0.01)


def _linear_bias_init(fan_in: int):
  bound = 1.0 / fan_in**0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _linear(in_features, out_features, *, dtype, rngs):
  return nnx.Linear(in_features, out_features, kernel_init=_weight_init,
                    bias_init=_linear_bias_init(in_features), dtype=dtype, rngs=rngs)


def pool_padding(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool
                 ) -> tuple[int, int]:
  """(low, high) padding that gives PyTorch's MaxPool2d output size along one axis.

  PyTorch: out = floor_or_ceil((size + 2 * padding - kernel) / stride) + 1, one
  less in ceil mode when the last window would start in the right padding.
  Floor mode is the symmetric padding as given; in ceil mode the high side
  pads what the last window needs beyond the input (with -inf: it never wins).
  """
  if not ceil_mode:
    return padding, padding
  out = -(-(size + 2 * padding - kernel) // stride) + 1
  if (out - 1) * stride >= size + padding:
    out -= 1
  return padding, max((out - 1) * stride + kernel - size - padding, 0)


def max_pool(x: jax.Array, kernel: int, stride: int, padding: int = 0,
             ceil_mode: bool = False) -> jax.Array:
  """PyTorch's MaxPool2d (dilation 1) on NHWC, ceil_mode included."""
  pads = tuple(pool_padding(n, kernel, stride, padding, ceil_mode) for n in x.shape[1:3])
  return nnx.max_pool(x, (kernel, kernel), strides=(stride, stride), padding=pads)


class MaxPool(nnx.Module):
  """Parameter-free; holds its index in `branch4` so `branch4.1` is the 1x1 conv as in torchvision."""

  def __init__(self, kernel: int, stride: int, padding: int = 0, ceil_mode: bool = True):
    self.kernel, self.stride, self.padding, self.ceil_mode = kernel, stride, padding, ceil_mode

  def __call__(self, x):
    return max_pool(x, self.kernel, self.stride, self.padding, self.ceil_mode)


class BasicConv2d(nnx.Module):
  """Convolution without bias, BatchNorm (epsilon 1e-3), ReLU: torchvision's BasicConv2d."""

  def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0, *,
               dtype, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=stride,
                         padding=((padding, padding), (padding, padding)), use_bias=False,
                         kernel_init=_weight_init, dtype=dtype, rngs=rngs)
    # momentum 0.9 == PyTorch's momentum 0.1 (Flax weights the old average).
    self.bn = BatchNorm(out_ch, momentum=0.9, epsilon=1e-3, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return nnx.relu(self.bn(self.conv(x)))


class Inception(nnx.Module):
  """Four branches concatenated along the channels: 1x1; 1x1 -> 3x3; 1x1 -> 3x3 (the
  paper's 5x5, see the module doc); 3x3/1 max-pool -> 1x1."""

  def __init__(self, in_ch: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int,
               ch5x5: int, pool_proj: int, *, dtype, rngs: nnx.Rngs):
    conv = functools.partial(BasicConv2d, dtype=dtype, rngs=rngs)
    self.branch1 = conv(in_ch, ch1x1, 1)
    self.branch2 = nnx.Sequential(conv(in_ch, ch3x3red, 1), conv(ch3x3red, ch3x3, 3, padding=1))
    self.branch3 = nnx.Sequential(conv(in_ch, ch5x5red, 1), conv(ch5x5red, ch5x5, 3, padding=1))
    self.branch4 = nnx.Sequential(MaxPool(3, 1, padding=1, ceil_mode=True),
                                  conv(in_ch, pool_proj, 1))
    self.out_ch = ch1x1 + ch3x3 + ch5x5 + pool_proj

  def __call__(self, x):
    return jnp.concatenate(
        [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], axis=-1)


class InceptionAux(nnx.Module):
  """Auxiliary classifier: 4x4 adaptive average pool, 1x1 conv to 128, flatten in NCHW
  order (the order torchvision's `fc1` weights read), fc1 -> ReLU -> dropout -> fc2."""

  def __init__(self, in_ch: int, num_classes: int, *, conv_ch: int, hidden: int,
               dropout_rate: float, dropout_rngs: nnx.Rngs | None, dtype, rngs: nnx.Rngs):
    self.conv = BasicConv2d(in_ch, conv_ch, 1, dtype=dtype, rngs=rngs)
    self.fc1 = _linear(conv_ch * 16, hidden, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=dropout_rngs if dropout_rate > 0 else None)
    self.fc2 = _linear(hidden, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = self.conv(adaptive_avg_pool(x, 4))
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # PyTorch's flatten order.
    return self.fc2(self.dropout(nnx.relu(self.fc1(x))))


# torchvision's Inception arguments (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj);
# each block's input is the previous one's output (a max-pool between stages).
_INCEPTIONS = {
    'inception3a': (64, 96, 128, 16, 32, 32),
    'inception3b': (128, 128, 192, 32, 96, 64),
    'inception4a': (192, 96, 208, 16, 48, 64),
    'inception4b': (160, 112, 224, 24, 64, 64),
    'inception4c': (128, 128, 256, 24, 64, 64),
    'inception4d': (112, 144, 288, 32, 64, 64),
    'inception4e': (256, 160, 320, 32, 128, 128),
    'inception5a': (256, 160, 320, 32, 128, 128),
    'inception5b': (384, 192, 384, 48, 128, 128),
}
# torchvision's `transform_input`: its ImageNet weights (ported from TensorFlow) expect
# inputs scaled to [-1, 1]; this maps ImageNet-normalised inputs there.
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class GoogLeNet(Classifier):
  """torchvision's GoogLeNet.

  Args:
    num_classes: outputs of `fc` (and of the auxiliary classifiers' `fc2`).
    aux_logits: build the auxiliary classifiers `aux1` and `aux2` (torchvision's
      default for training from scratch; its pretrained model drops them). In
      train mode `logits_and_aux` returns their logits and the train loss adds
      `aux_weight` (0.3, the paper's) times each of their losses.
    transform_input: rescale ImageNet-normalised inputs to [-1, 1] first, as
      torchvision's pretrained weights expect (torchvision's `googlenet(weights=...)`
      turns it on).
    width: config.model.width: conv1's channels; every channel count scales by
      width / 64, at least 1. 0: torchvision's (64).
    dropout_rate: dropout before `fc` in train mode (torchvision's 0.2).
    aux_dropout_rate: dropout between the auxiliary classifiers' fc1 and fc2 (0.7).
    dtype: the compute dtype; parameters stay float32.

  `features(x)` is inception5b's output, average-pooled; `classify` applies the
  dropout and `fc`.
  """

  head_name = 'fc'

  def __init__(self, *, num_classes: int, aux_logits: bool = False,
               transform_input: bool = False, width: int = 0, dropout_rate: float = 0.2,
               aux_dropout_rate: float = 0.7, aux_weight: float = 0.3,
               dtype: str | jnp.dtype = 'float32', rngs: nnx.Rngs):
    if width < 0:
      raise ValueError(f'width must be >= 0 (0: torchvision\'s 64), got {width}')
    for name, rate in (('dropout_rate', dropout_rate), ('aux_dropout_rate', aux_dropout_rate)):
      if not 0.0 <= rate < 1.0:
        raise ValueError(f'{name} must be in [0, 1), got {rate}')
    dtype = jnp.dtype(dtype)
    width = width or 64
    ch = lambda c: max(1, c * width // 64)  # noqa: E731
    conv = functools.partial(BasicConv2d, dtype=dtype, rngs=rngs)
    dropout_rngs = dropout_rngs_for(rngs, dropout_rate, aux_dropout_rate if aux_logits else 0.0)
    self.aux_logits = aux_logits
    self.aux_weight = aux_weight
    self.transform_input = transform_input

    self.conv1 = conv(3, ch(64), 7, stride=2, padding=3)
    self.maxpool1 = MaxPool(3, 2, ceil_mode=True)
    self.conv2 = conv(ch(64), ch(64), 1)
    self.conv3 = conv(ch(64), ch(192), 3, padding=1)
    self.maxpool2 = MaxPool(3, 2, ceil_mode=True)
    in_ch, aux_in = ch(192), {}
    for name, channels in _INCEPTIONS.items():
      block = Inception(in_ch, *map(ch, channels), dtype=dtype, rngs=rngs)
      setattr(self, name, block)
      in_ch = aux_in[name] = block.out_ch
    self.maxpool3 = MaxPool(3, 2, ceil_mode=True)
    self.maxpool4 = MaxPool(2, 2, ceil_mode=True)
    if aux_logits:
      aux = functools.partial(InceptionAux, num_classes=num_classes, conv_ch=ch(128),
                              hidden=ch(1024), dropout_rate=aux_dropout_rate,
                              dropout_rngs=dropout_rngs, dtype=dtype, rngs=rngs)
      self.aux1 = aux(aux_in['inception4a'])
      self.aux2 = aux(aux_in['inception4d'])
    self.dropout = nnx.Dropout(dropout_rate, rngs=dropout_rngs if dropout_rate > 0 else None)
    self.fc = _linear(in_ch, num_classes, dtype=dtype, rngs=rngs)
    self.num_features = in_ch

  def _transform_input(self, x: jax.Array) -> jax.Array:
    if not self.transform_input:
      return x
    return jnp.concatenate([x[..., c:c + 1] * (_STD[c] / 0.5) + (_MEAN[c] - 0.5) / 0.5
                            for c in range(3)], axis=-1)

  def _forward(self, x: jax.Array, with_aux: bool) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """-> (inception5b's output [B, h, w, C], the auxiliary logits when `with_aux`)."""
    x = self._transform_input(x)
    x = self.maxpool1(self.conv1(x))
    x = self.maxpool2(self.conv3(self.conv2(x)))
    x = self.maxpool3(self.inception3b(self.inception3a(x)))
    x = self.inception4a(x)
    aux = [self.aux1(x)] if with_aux else []
    x = self.inception4d(self.inception4c(self.inception4b(x)))
    if with_aux:
      aux.append(self.aux2(x))
    x = self.maxpool4(self.inception4e(x))
    return self.inception5b(self.inception5a(x)), tuple(aux)

  def feature_map(self, x: jax.Array) -> jax.Array:
    """Images [batch, height, width, 3] -> inception5b's activations, before pooling."""
    return self._forward(x, with_aux=False)[0]

  def features(self, x: jax.Array) -> jax.Array:
    """Images [batch, height, width, 3] -> pooled features [batch, num_features]."""
    return mean_pool(self.feature_map(x))

  def last_stage(self, x: jax.Array) -> StageSplit:
    return self.feature_map(x), mean_pool

  def classify(self, features: jax.Array) -> jax.Array:
    return self.fc(self.dropout(features))

  def aux_training(self) -> bool:
    """Whether the auxiliary heads exist and are in train mode (not eval, not frozen)."""
    return self.aux_logits and not (self.aux1.conv.bn.use_running_average
                                    or self.aux2.conv.bn.use_running_average)

  def logits_and_aux(self, x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """-> (logits, (aux1's, aux2's logits)) while the auxiliary heads train, else (logits, ())."""
    if not self.aux_training():
      return self(x), ()
    activations, aux = self._forward(x, with_aux=True)
    return self.classify(mean_pool(activations)), aux

  @property
  def group_patterns(self):
    """stem, inception3, inception4, [aux,] inception5, head: input to output."""
    groups = [('stem', r'(conv1|conv2|conv3)(/|$)'),
              ('inception3', r'(inception3a|inception3b)(/|$)'),
              ('inception4', r'inception4[a-e](/|$)')]
    if self.aux_logits:
      groups.append(('aux', r'(aux1|aux2)(/|$)'))
    groups += [('inception5', r'(inception5a|inception5b)(/|$)'), ('head', r'fc(/|$)')]
    return tuple(groups)

  @property
  def tied_groups(self):
    # The auxiliary heads train with the stage they read (they exist to train it).
    return {'aux': 'inception4'} if self.aux_logits else {}

  @property
  def class_layers(self):
    return ('fc', 'aux1.fc2', 'aux2.fc2') if self.aux_logits else ('fc',)

  @property
  def checkpoint_layouts(self):
    if self.aux_logits:
      return {}
    # torchvision's checkpoint carries the auxiliary heads; a model without them drops them.
    return {'torchvision': lambda k: None if k.startswith(('aux1.', 'aux2.')) else k}


register('googlenet')(GoogLeNet)
