"""ConvNeXt (Liu et al. 2022) in flax.nnx: tiny, small, base and large from one module.

Module names and indices follow torchvision's `torchvision.models.convnext`
state dict (`features.{i}`, `block.{0,2,3,5}`, `layer_scale`, `classifier.{0,2}`),
so its checkpoints map onto these modules name by name; timm's checkpoints
(`stem`, `stages.{i}.blocks.{j}.conv_dw`, `gamma`, `head.fc`...) are renamed
to those keys by `timm_to_canonical`. Images are NHWC throughout, so
torchvision's Permutes are no-ops here and its LayerNorm2d is a LayerNorm over
the last axis; both keep their places in the sequences so the indices after
them stay torchvision's.
"""

import functools
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcls.models.interface import Classifier, StageSplit, mean_pool
from jaxcls.models.registry import register

# torchvision and timm initialise every convolution and linear weight with a
# truncated normal of std 0.02 and zero biases.
_weight_init = nnx.initializers.truncated_normal(0.02)
# Folded into the params key for the stochastic depth stream when `rngs` has
# no `dropout` stream; far above any count the params stream reaches.
_DROPOUT_SALT = 0x7D0F_0000


class _Permute(nnx.Module):
  """torchvision's NCHW <-> NHWC Permute: a no-op on NHWC images, kept for the indices."""

  def __call__(self, x):
    return x


class _Gelu(nnx.Module):
  """The exact (erf) GELU of torch's default nn.GELU, not the tanh approximation."""

  def __call__(self, x):
    return jax.nn.gelu(x, approximate=False)


class _Flatten(nnx.Module):
  """torchvision's Flatten in the classifier: pooled features are already [batch, C]."""

  def __call__(self, x):
    return x


def _layer_norm(ch, *, dtype, rngs):
  # The two-pass variance of torch's layer_norm, not Flax's E[x^2] - E[x]^2.
  return nnx.LayerNorm(ch, epsilon=1e-6, use_fast_variance=False, dtype=dtype, rngs=rngs)


def _linear(in_features, out_features, *, dtype, rngs):
  return nnx.Linear(in_features, out_features, kernel_init=_weight_init, dtype=dtype, rngs=rngs)


def _conv(in_ch, out_ch, kernel, stride, *, groups=1, dtype, rngs):
  pad = (kernel - stride) // 2  # 3 for the 7x7/1 depthwise conv, 0 for the 4x4/4 and 2x2/2.
  return nnx.Conv(
      in_ch, out_ch, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
      feature_group_count=groups, kernel_init=_weight_init, dtype=dtype, rngs=rngs)


class CNBlock(nnx.Module):
  """Depthwise 7x7 -> LayerNorm -> Linear(C, 4C) -> GELU -> Linear(4C, C), scaled, residual.

  `stochastic_depth` drops the whole residual branch of an example with
  probability `drop_path_rate` in train mode (torchvision's 'row' mode); it
  owns RNG state only when that probability is non-zero.
  """

  def __init__(self, dim: int, drop_path_rate: float, *, layer_scale: float = 1e-6, dtype,
               rngs: nnx.Rngs, dropout_rngs: nnx.Rngs | None):
    self.block = nnx.Sequential(
        _conv(dim, dim, 7, 1, groups=dim, dtype=dtype, rngs=rngs),
        _Permute(),
        _layer_norm(dim, dtype=dtype, rngs=rngs),
        _linear(dim, 4 * dim, dtype=dtype, rngs=rngs),
        _Gelu(),
        _linear(4 * dim, dim, dtype=dtype, rngs=rngs),
        _Permute(),
    )
    self.layer_scale = nnx.Param(jnp.full((dim,), layer_scale, jnp.float32))
    self.stochastic_depth = nnx.Dropout(
        drop_path_rate, broadcast_dims=(1, 2, 3),
        rngs=dropout_rngs if drop_path_rate > 0 else None)

  def __call__(self, x):
    y = self.block(x) * self.layer_scale[...].astype(x.dtype)
    return x + self.stochastic_depth(y)


class ConvNeXtFeatures(nnx.Module):
  """torchvision's `features` Sequential (stem, stages, downsamplings), global pool, head norm.

  It is the model's `features` attribute, so its modules keep the keys
  `features.{i}...`, and calling it is the model's `features(x)`. `head_norm`
  is the model's `classifier.0` itself, shared, not a copy: nnx lists a shared
  variable once, at its first path in sorted order, so it keeps the key
  `classifier.0` ('classifier' < 'features').
  """

  def __init__(self, layers: list[nnx.Module], head_norm: nnx.LayerNorm):
    self.layers = nnx.List(layers)  # `layers` is dropped from the keys, as nnx.Sequential's.
    self.head_norm = head_norm

  def feature_map(self, x: jax.Array) -> jax.Array:
    """Images [batch, height, width, 3] -> the last stage's activations, before pooling."""
    for layer in self.layers:
      if isinstance(layer, nnx.List):  # A stage: its CNBlocks.
        for block in layer:
          x = block(x)
      else:
        x = layer(x)
    return x

  def pool(self, feature_map: jax.Array) -> jax.Array:
    return self.head_norm(mean_pool(feature_map))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Images [batch, height, width, 3] -> normalised pooled features [batch, C]."""
    return self.pool(self.feature_map(x))


# timm key prefix -> torchvision's. Stage i's downsampling is torchvision's
# features.{2i} and its blocks features.{2i+1}; timm's stage 0 has no downsampling.
_TIMM_PATTERNS = (
    (r'stem\.([01])\.', lambda m: f'features.0.{m[1]}.'),
    (r'stages\.(\d+)\.downsample\.([01])\.', lambda m: f'features.{2 * int(m[1])}.{m[2]}.'),
    (r'stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.',
     lambda m: f'features.{2 * int(m[1]) + 1}.{m[2]}.block.0.'),
    (r'stages\.(\d+)\.blocks\.(\d+)\.norm\.',
     lambda m: f'features.{2 * int(m[1]) + 1}.{m[2]}.block.2.'),
    (r'stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.',
     lambda m: f'features.{2 * int(m[1]) + 1}.{m[2]}.block.3.'),
    (r'stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.',
     lambda m: f'features.{2 * int(m[1]) + 1}.{m[2]}.block.5.'),
    (r'stages\.(\d+)\.blocks\.(\d+)\.gamma$',
     lambda m: f'features.{2 * int(m[1]) + 1}.{m[2]}.layer_scale'),
    (r'head\.norm\.', lambda m: 'classifier.0.'),
    (r'head\.fc\.', lambda m: 'classifier.2.'),
)


def timm_to_canonical(key: str) -> str:
  """A timm `convnext_*` key -> its torchvision key.

  timm's layer scale `gamma` is [C] where torchvision's is [C, 1, 1]; both
  load into the [C] `layer_scale`. A key of no known pattern is returned
  marked, so that strict loading lists it as unused rather than it passing
  for a torchvision key.
  """
  for pattern, rename in _TIMM_PATTERNS:
    match = re.match(pattern, key)
    if match:
      return rename(match) + key[match.end():]
  return f'<not a timm convnext key> {key}'


class ConvNeXt(Classifier):
  """A ConvNeXt: 4x4/4 patch stem, four stages of CNBlocks, 2x2/2 downsampling between them.

  The head is torchvision's `classifier`: a LayerNorm of the pooled features
  (`classifier.0`), then the Linear (`classifier.2`). `features(x)` returns
  the normalised pooled features the Linear consumes, and `head_name` is
  'classifier.2', so `load_state_dict(..., keep_head=False)` replaces only the
  Linear and still loads the head LayerNorm from the checkpoint.

  Stochastic depth rises linearly from 0 at the first block to
  `drop_path_rate` at the last, as in torchvision, and acts in train mode
  only; its masks come from the `dropout` stream of `rngs`, or from a stream
  derived from the `params` key when there is none (as from `create_model`).
  With the default `drop_path_rate=0.0` the model holds no RNG state.
  """

  head_name = 'classifier.2'
  # Parameter groups from input to output. A stage's group includes the
  # downsampling in front of it (as in timm); the head is the LayerNorm of the
  # pooled features and the Linear, wherever nnx finds the shared norm.
  group_patterns = (('stem', r'features/layers/0(/|$)'),
                    ('stage1', r'features/layers/1(/|$)'),
                    ('stage2', r'features/layers/(2|3)(/|$)'),
                    ('stage3', r'features/layers/(4|5)(/|$)'),
                    ('stage4', r'features/layers/(6|7)(/|$)'),
                    ('head', r'(classifier|features/head_norm)(/|$)'))
  checkpoint_layouts = {'timm': timm_to_canonical}

  def __init__(self, *, depths: Sequence[int], dims: Sequence[int], num_classes: int,
               drop_path_rate: float = 0.0, layer_scale: float = 1e-6, width: int = 0,
               dtype: str | jnp.dtype = 'float32', rngs: nnx.Rngs):
    # `width` (config.model.width) sets the first stage's channels, doubling per stage.
    depths, dims = tuple(depths), tuple(width * 2**i for i in range(4)) if width else tuple(dims)
    if len(depths) != 4 or len(dims) != 4:
      raise ValueError(f'ConvNeXt has four stages; got depths={depths}, dims={dims}')
    if not 0.0 <= drop_path_rate < 1.0:
      raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
    dtype = jnp.dtype(dtype)
    dropout_rngs = None
    if drop_path_rate > 0 and 'dropout' in rngs:
      dropout_rngs = rngs
    elif drop_path_rate > 0:
      # Folded from the params key without drawing from the stream, so a seed
      # initialises the same weights whatever the drop path rate.
      dropout_rngs = nnx.Rngs(dropout=jax.random.fold_in(rngs.params.key[...], _DROPOUT_SALT))
    total_blocks = sum(depths)
    layers = [nnx.Sequential(_conv(3, dims[0], 4, 4, dtype=dtype, rngs=rngs),
                             _layer_norm(dims[0], dtype=dtype, rngs=rngs))]
    block_id = 0
    for i, (depth, dim) in enumerate(zip(depths, dims)):
      if i > 0:
        layers.append(nnx.Sequential(_layer_norm(dims[i - 1], dtype=dtype, rngs=rngs),
                                     _conv(dims[i - 1], dim, 2, 2, dtype=dtype, rngs=rngs)))
      stage = []
      for _ in range(depth):
        rate = drop_path_rate * block_id / max(total_blocks - 1, 1)
        stage.append(CNBlock(dim, rate, layer_scale=layer_scale, dtype=dtype, rngs=rngs,
                             dropout_rngs=dropout_rngs))
        block_id += 1
      layers.append(nnx.List(stage))
    head_norm = _layer_norm(dims[-1], dtype=dtype, rngs=rngs)
    self.features = ConvNeXtFeatures(layers, head_norm)
    self.classifier = nnx.Sequential(
        head_norm, _Flatten(), _linear(dims[-1], num_classes, dtype=dtype, rngs=rngs))
    self.num_features = dims[-1]

  def last_stage(self, x: jax.Array) -> StageSplit:
    return self.features.feature_map(x), self.features.pool


_SIZES = {
    'convnext_tiny': ((3, 3, 9, 3), (96, 192, 384, 768)),
    'convnext_small': ((3, 3, 27, 3), (96, 192, 384, 768)),
    'convnext_base': ((3, 3, 27, 3), (128, 256, 512, 1024)),
    'convnext_large': ((3, 3, 27, 3), (192, 384, 768, 1536)),
}


# Keyword defaults: `create_model('convnext_tiny', 10, depths=..., dims=...)` overrides them.
for _name, (_depths, _dims) in _SIZES.items():
  register(_name)(functools.partial(ConvNeXt, depths=_depths, dims=_dims))
