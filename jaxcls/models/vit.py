"""Vision Transformers (Dosovitskiy et al. 2021; DeiT's recipe without its distillation token).

Module names follow timm's `VisionTransformer` (`patch_embed.proj`,
`cls_token`, `pos_embed`, `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,
mlp.fc1,mlp.fc2}`, `norm`, `head`), so timm's and DeiT's checkpoints map onto
these modules name by name; torchvision's `vit_b_16` layout (`conv_proj`,
`encoder.layers.encoder_layer_{i}`, `heads.head`...) is renamed to them by
`torchvision_to_canonical`. Both libraries compute the same function: a 16x16
stride-16 patch convolution, a class token, learned absolute position
embeddings, pre-norm blocks (LayerNorm eps 1e-6, fused qkv projection, exact
GELU), a final LayerNorm and the class token as the pooled features.

The position embeddings fix the input size (`img_size`). A checkpoint made
at another size loads anyway: its grid of position embeddings is resampled
to the model's as timm resamples it at load time
(`resample_abs_pos_embed`, bicubic with antialiasing), in numpy, so
loading needs no torch.

Attention goes through `jax.nn.dot_product_attention`, so XLA (or cuDNN) can
fuse it on GPU rather than materialising the [B, heads, N, N] scores.
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from jaxcls.models.interface import Classifier, GroupPatterns, StageSplit
from jaxcls.models.registry import register

# timm's init_weights_vit_timm: Linear weights trunc_normal_(std=.02) with
# timm's default bounds of +-2 *absolute*, i.e. +-100 std: a plain normal.
# Biases zero; LayerNorms ones and zeros; the class token normal(1e-6); the
# position embeddings trunc_normal_(std=.02), a normal again.
_linear_init = nnx.initializers.normal(0.02)
_pos_embed_init = nnx.initializers.normal(0.02)
_cls_token_init = nnx.initializers.normal(1e-6)
# The patch convolution keeps PyTorch's default Conv2d init (timm's ViT init
# touches Linears only): weight and bias uniform(+-1/sqrt(fan_in)).
_conv_init = nnx.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
# Folded into the params key for the dropout stream when `rngs` has none; as ConvNeXt's.
_DROPOUT_SALT = 0x7D0F_0000


def _uniform_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _layer_norm(dim, *, dtype, rngs):
  # The two-pass variance of torch's layer_norm, not Flax's E[x^2] - E[x]^2.
  return nnx.LayerNorm(dim, epsilon=1e-6, use_fast_variance=False, dtype=dtype, rngs=rngs)


def _linear(in_features, out_features, *, dtype, rngs):
  return nnx.Linear(in_features, out_features, kernel_init=_linear_init, dtype=dtype, rngs=rngs)


class PatchEmbed(nnx.Module):
  """Images [B, H, W, 3] -> patch tokens [B, (H/p)(W/p), D], row-major as timm's flatten(2)."""

  def __init__(self, patch_size: int, embed_dim: int, *, dtype, rngs: nnx.Rngs):
    fan_in = 3 * patch_size * patch_size
    self.proj = nnx.Conv(3, embed_dim, (patch_size, patch_size), strides=patch_size,
                         padding='VALID', kernel_init=_conv_init,
                         bias_init=_uniform_bias_init(fan_in), dtype=dtype, rngs=rngs)

  def grid(self, x: jax.Array) -> jax.Array:
    """Images -> patch embeddings on their grid [B, h, w, D]."""
    return self.proj(x)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.grid(x)
    return y.reshape(y.shape[0], -1, y.shape[-1])


class Attention(nnx.Module):
  """Multi-head self-attention with timm's fused qkv: Linear(D, 3D) split as (3, heads, head_dim)."""

  def __init__(self, dim: int, num_heads: int, *, dtype, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.qkv = _linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
    self.proj = _linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    # timm: qkv(x).reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4); here
    # dot_product_attention takes [B, N, heads, head_dim] as it comes.
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    y = jax.nn.dot_product_attention(q, k, v)  # Scaled by 1/sqrt(head_dim), as timm.
    return self.proj(y.reshape(b, n, d))


class Mlp(nnx.Module):
  """fc1 -> exact (erf) GELU -> fc2, as timm's Mlp with torch's default nn.GELU."""

  def __init__(self, dim: int, hidden: int, *, dtype, rngs: nnx.Rngs):
    self.fc1 = _linear(dim, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = _linear(hidden, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
  """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x)).

  `drop_path` drops each residual branch of an example with probability
  `drop_path_rate` in train mode (timm's DropPath); it owns RNG state only
  when that probability is non-zero.
  """

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path_rate: float, *,
               dtype, rngs: nnx.Rngs, dropout_rngs: nnx.Rngs | None):
    self.norm1 = _layer_norm(dim, dtype=dtype, rngs=rngs)
    self.attn = Attention(dim, num_heads, dtype=dtype, rngs=rngs)
    self.norm2 = _layer_norm(dim, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
    self.drop_path = nnx.Dropout(drop_path_rate, broadcast_dims=(1, 2),
                                 rngs=dropout_rngs if drop_path_rate > 0 else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.drop_path(self.attn(self.norm1(x)))
    return x + self.drop_path(self.mlp(self.norm2(x)))


# torchvision key pattern -> ours. The MLP is torchvision's MLPBlock, an
# MLP(in, [mlp_dim, in]) Sequential: Linear (0), GELU (1), Dropout (2),
# Linear (3), Dropout (4); checkpoints before its version 2 named the Linears
# linear_1 and linear_2.
_ENCODER_LAYER = r'encoder\.layers\.encoder_layer_(\d+)\.'
_TORCHVISION_PATTERNS = (
    (r'class_token$', lambda m: 'cls_token'),
    (r'conv_proj\.', lambda m: 'patch_embed.proj.'),
    (r'encoder\.pos_embedding$', lambda m: 'pos_embed'),
    (_ENCODER_LAYER + r'ln_1\.', lambda m: f'blocks.{m[1]}.norm1.'),
    (_ENCODER_LAYER + r'self_attention\.in_proj_(weight|bias)$',
     lambda m: f'blocks.{m[1]}.attn.qkv.{m[2]}'),
    (_ENCODER_LAYER + r'self_attention\.out_proj\.', lambda m: f'blocks.{m[1]}.attn.proj.'),
    (_ENCODER_LAYER + r'ln_2\.', lambda m: f'blocks.{m[1]}.norm2.'),
    (_ENCODER_LAYER + r'mlp\.(0|linear_1)\.', lambda m: f'blocks.{m[1]}.mlp.fc1.'),
    (_ENCODER_LAYER + r'mlp\.(3|linear_2)\.', lambda m: f'blocks.{m[1]}.mlp.fc2.'),
    (r'encoder\.ln\.', lambda m: 'norm.'),
    (r'heads\.head\.', lambda m: 'head.'),
)


def torchvision_to_canonical(key: str) -> str:
  """A torchvision `vit_*` key -> ours (timm's).

  torchvision's nn.MultiheadAttention stacks q, k and v in `in_proj_weight`
  [3D, D] in the order timm's `qkv` Linear does, with heads as consecutive
  head_dim blocks of each, so it loads into `attn.qkv` as it is. A key of no
  known pattern (e.g. `heads.pre_logits` of a model with a representation
  layer) is returned marked, so that strict loading lists it as unused.
  """
  for pattern, rename in _TORCHVISION_PATTERNS:
    match = re.match(pattern, key)
    if match:
      return rename(match) + key[match.end():]
  return f'<not a torchvision vit key> {key}'


def _timm_identity(key: str) -> str:
  return key


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel with parameter a."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = (((x - 5) * x + 8) * x - 4) * a
  return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(in_size: int, out_size: int, antialias: bool = True) -> np.ndarray:
  """[out_size, in_size] weights of PyTorch's 1-D bicubic resize (align_corners=False).

  antialias=False: `F.interpolate(mode='bicubic')`, cubic convolution with
  a=-0.75 at source (i + 0.5) * in/out - 0.5, the four taps clamped to the
  border. antialias=True: `_upsample_bicubic2d_aa`, which PyTorch uses for
  upsampling too, not only downsampling: PIL's filter (a=-0.5), its support
  stretched by in/out when downsampling, the taps limited to the image and
  their weights renormalised to sum to one.
  """
  scale = in_size / out_size
  weights = np.zeros((out_size, in_size))
  if antialias:
    support = 2.0 * max(scale, 1.0)
    inverse = 1.0 / max(scale, 1.0)
    for i in range(out_size):
      center = scale * (i + 0.5)
      lo = max(int(center - support + 0.5), 0)
      hi = min(int(center + support + 0.5), in_size)
      taps = _cubic((np.arange(lo, hi) - center + 0.5) * inverse, -0.5)
      weights[i, lo:hi] = taps / taps.sum()
    return weights
  for i in range(out_size):
    source = scale * (i + 0.5) - 0.5
    first = math.floor(source)
    for k in range(-1, 3):
      weights[i, min(max(first + k, 0), in_size - 1)] += _cubic(source - first - k, -0.75)
  return weights


def resample_abs_pos_embed(pos_embed: np.ndarray, new_size: tuple[int, int],
                           num_prefix_tokens: int = 1, antialias: bool = True) -> np.ndarray:
  """timm's `resample_abs_pos_embed` in numpy: [1, prefix + h*w, D] -> [1, prefix + H*W, D].

  The prefix (class) token is kept; the square grid of the rest is resized
  with `F.interpolate(mode='bicubic', antialias=antialias,
  align_corners=False)` (timm's defaults), separably, in float64, and cast
  back to the input's dtype.
  """
  pos_embed = np.asarray(pos_embed)
  prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
  old = math.isqrt(grid.shape[1])
  if old * old != grid.shape[1]:
    raise ValueError(f'position embeddings of {grid.shape[1]} tokens are not a square grid')
  grid = grid.astype(np.float64).reshape(grid.shape[0], old, old, grid.shape[-1])
  rows = bicubic_matrix(old, new_size[0], antialias)
  cols = bicubic_matrix(old, new_size[1], antialias)
  grid = np.einsum('oi,bijd,pj->bopd', rows, grid, cols)
  grid = grid.reshape(grid.shape[0], -1, grid.shape[-1]).astype(pos_embed.dtype)
  return np.concatenate([prefix, grid], axis=1)


class VisionTransformer(Classifier):
  """A ViT with a class token, pooled by that token after the final LayerNorm.

  `img_size // patch_size` patches a side, so `pos_embed` holds
  (img_size // patch_size)^2 + 1 embeddings and inputs must be
  img_size x img_size. `width` (config.model.width) replaces `embed_dim`,
  with `max(1, width // 64)` heads (head_dim 64, as ViT-S and ViT-B);
  `depth` is an ordinary keyword, so `create_model(..., depth=2)` makes a
  shallow one. `dropout_rate` drops the pooled features before the head in
  train mode (timm's `head_drop`); `drop_path_rate` is stochastic depth
  rising linearly to that rate at the last block (timm's; DeiT trains with
  0.1). Both take their masks from the `dropout` stream of `rngs`, or one
  derived from the `params` key when there is none; at 0 they hold no RNG
  state.

  Grad-CAM (`last_stage`) reads the tokens *entering* the last block, not
  the ones leaving it: with class-token pooling, the last block's output
  patch tokens never reach the head (only the class token is pooled) and so
  get no gradient; the last block's attention is where the class token reads
  the patches. pytorch-grad-cam recommends the same target,
  `blocks[-1].norm1`, whose input these tokens are.
  """

  head_name = 'head'
  # Our keys are timm's; torchvision's layout replaces the loader's default identity one.
  checkpoint_layouts = {'timm': _timm_identity, 'torchvision': torchvision_to_canonical}

  def __init__(self, *, img_size: int = 224, patch_size: int = 16, embed_dim: int, depth: int,
               num_heads: int, mlp_ratio: float = 4.0, num_classes: int, width: int = 0,
               dropout_rate: float = 0.0, drop_path_rate: float = 0.0,
               dtype: str | jnp.dtype = 'float32', rngs: nnx.Rngs):
    if width:
      embed_dim, num_heads = width, max(1, width // 64)
    if embed_dim % num_heads:
      raise ValueError(f'embed_dim {embed_dim} is not divisible by num_heads {num_heads}')
    if img_size % patch_size:
      raise ValueError(f'img_size {img_size} is not a multiple of patch_size {patch_size}')
    if depth < 1:
      raise ValueError(f'depth must be >= 1, got {depth}')
    for name, rate in (('dropout_rate', dropout_rate), ('drop_path_rate', drop_path_rate)):
      if not 0.0 <= rate < 1.0:
        raise ValueError(f'{name} must be in [0, 1), got {rate}')
    self.dtype = jnp.dtype(dtype)
    self.img_size, self.patch_size = img_size, patch_size
    self.grid_size = img_size // patch_size
    self.num_features = self.embed_dim = embed_dim
    dropout_rngs = None
    if (dropout_rate > 0 or drop_path_rate > 0) and 'dropout' in rngs:
      dropout_rngs = rngs
    elif dropout_rate > 0 or drop_path_rate > 0:
      # Folded from the params key without drawing from the stream, so a seed
      # initialises the same weights whatever the dropout rates.
      dropout_rngs = nnx.Rngs(dropout=jax.random.fold_in(rngs.params.key[...], _DROPOUT_SALT))

    self.patch_embed = PatchEmbed(patch_size, embed_dim, dtype=self.dtype, rngs=rngs)
    self.cls_token = nnx.Param(_cls_token_init(rngs.params(), (1, 1, embed_dim), jnp.float32))
    self.pos_embed = nnx.Param(_pos_embed_init(
        rngs.params(), (1, self.grid_size**2 + 1, embed_dim), jnp.float32))
    self.blocks = nnx.List([
        Block(embed_dim, num_heads, mlp_ratio, drop_path_rate * i / max(depth - 1, 1),
              dtype=self.dtype, rngs=rngs, dropout_rngs=dropout_rngs)
        for i in range(depth)])
    self.norm = _layer_norm(embed_dim, dtype=self.dtype, rngs=rngs)
    self.head_drop = nnx.Dropout(dropout_rate, rngs=dropout_rngs if dropout_rate > 0 else None)
    self.head = _linear(embed_dim, num_classes, dtype=self.dtype, rngs=rngs)

  def _check_size(self, x: jax.Array) -> None:
    if tuple(x.shape[1:3]) != (self.img_size, self.img_size):
      raise ValueError(
          f'{type(self).__name__} was built for {self.img_size}x{self.img_size} inputs '
          f'(img_size={self.img_size}: its position embeddings are a {self.grid_size}x'
          f'{self.grid_size} grid) but got {x.shape[1]}x{x.shape[2]}; build it with '
          f'img_size={x.shape[1]} (pretrained position embeddings are resampled to it)')

  def tokens(self, x: jax.Array) -> jax.Array:
    """Images [B, H, W, 3] -> [class token, patch tokens] + position embeddings, [B, 1+N, D]."""
    self._check_size(x)
    patches = self.patch_embed(x)
    cls = jnp.broadcast_to(self.cls_token[...].astype(patches.dtype),
                           (patches.shape[0], 1, self.embed_dim))
    return jnp.concatenate([cls, patches], axis=1) + self.pos_embed[...].astype(patches.dtype)

  def pool(self, tokens: jax.Array) -> jax.Array:
    """Output tokens [B, 1+N, D] -> the normalised class token [B, D]."""
    return self.norm(tokens)[:, 0]

  def features(self, x: jax.Array) -> jax.Array:
    x = self.tokens(x)
    for block in self.blocks:
      x = block(x)
    return self.pool(x)

  def classify(self, features: jax.Array) -> jax.Array:
    return self.head(self.head_drop(features))

  def last_stage(self, x: jax.Array) -> StageSplit:
    """(patch tokens entering the last block [B, h, w, D], their function giving `features(x)`).

    The class token entering the last block is held from this forward pass
    and re-attached in front of the patch tokens. See the class doc for why
    the tokens before the last block, not after it.
    """
    x = self.tokens(x)
    *earlier, last = self.blocks
    for block in earlier:
      x = block(x)
    cls, patches = x[:, :1], x[:, 1:]
    batch, grid = x.shape[0], self.grid_size

    def rest(activations: jax.Array) -> jax.Array:
      flat = activations.reshape(batch, grid * grid, self.embed_dim)
      return self.pool(last(jnp.concatenate([cls, flat], axis=1)))

    return patches.reshape(batch, grid, grid, self.embed_dim), rest

  @property
  def group_patterns(self) -> GroupPatterns:
    """embed, block1..blockN (the final norm with the last block), head (the Linear alone)."""
    depth = len(self.blocks)
    groups = [('embed', r'(patch_embed|cls_token|pos_embed)(/|$)')]
    groups += [(f'block{i + 1}', rf'blocks/{i}(/|$)') for i in range(depth - 1)]
    groups.append((f'block{depth}', rf'(blocks/{depth - 1}|norm)(/|$)'))
    groups.append(('head', r'head(_drop)?(/|$)'))
    return tuple(groups)

  def adapt_checkpoint_tensor(self, key: str, value: np.ndarray,
                              target_shape: tuple[int, ...]) -> np.ndarray:
    """A checkpoint's position embeddings for another grid, resampled as timm does.

    Anything else, or embeddings of another width, or a token count that is
    no square grid plus the class token, is returned as is (the converter then
    reports the shape that does not fit).
    """
    shape = tuple(np.shape(value))
    if key != 'pos_embed' or shape == tuple(target_shape):
      return value
    if len(shape) != 3 or len(target_shape) != 3 or shape[-1] != target_shape[-1]:
      return value
    old_grid = math.isqrt(shape[1] - 1)
    if shape[1] < 2 or old_grid * old_grid != shape[1] - 1:
      return value
    logging.info('pos_embed: resampling the checkpoint\'s %dx%d grid to %dx%d (img_size=%d), '
                 'bicubic as timm', old_grid, old_grid, self.grid_size, self.grid_size,
                 self.img_size)
    return resample_abs_pos_embed(value, (self.grid_size, self.grid_size))


# (embed_dim, depth, num_heads) of timm's vit_{tiny,small,base}_patch16_224 and DeiT's.
_SIZES = {
    'vit_tiny_patch16': (192, 12, 3),
    'vit_small_patch16': (384, 12, 6),
    'vit_base_patch16': (768, 12, 12),
}

# Keyword defaults: `create_model('vit_small_patch16', 10, depth=2, img_size=32)` overrides them.
for _name, (_dim, _depth, _heads) in _SIZES.items():
  register(_name)(functools.partial(VisionTransformer, patch_size=16, embed_dim=_dim,
                                    depth=_depth, num_heads=_heads))
