"""PyTorch reference Vision Transformers: timm's module naming, and torchvision's layout.

timm and torchvision do not import on these machines, so the parity tests
carry transcriptions: `TimmViT` of timm.models.vision_transformer's
VisionTransformer with the options of its `vit_*_patch16_224` models
(class token, qkv_bias=True, LayerNorm eps 1e-6, exact GELU, token pooling:
`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.{i}.{norm1,attn.qkv,
attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`, `head`), and `TorchvisionViT` of
torchvision.models.vision_transformer's VisionTransformer (`class_token`,
`conv_proj`, `encoder.pos_embedding`, `encoder.layers.encoder_layer_{i}.
{ln_1,self_attention,ln_2,mlp.{0,3}}` with an nn.MultiheadAttention,
`encoder.ln`, `heads.head`). `resample_abs_pos_embed` is timm's, on
F.interpolate.
"""

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

SIZES = {  # (embed_dim, depth, num_heads)
    'vit_tiny_patch16': (192, 12, 3),
    'vit_small_patch16': (384, 12, 6),
    'vit_base_patch16': (768, 12, 12),
}


class TimmAttention(nn.Module):

  def __init__(self, dim, num_heads):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.qkv = nn.Linear(dim, dim * 3, bias=True)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # timm's non-fused path.
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class TimmMlp(nn.Module):

  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class TimmBlock(nn.Module):

  def __init__(self, dim, num_heads, mlp_ratio):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = TimmAttention(dim, num_heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = TimmMlp(dim, int(dim * mlp_ratio))

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class TimmPatchEmbed(nn.Module):

  def __init__(self, patch_size, embed_dim):
    super().__init__()
    self.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class TimmViT(nn.Module):

  def __init__(self, img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
               mlp_ratio=4.0, num_classes=1000):
    super().__init__()
    self.img_size = img_size
    self.patch_embed = TimmPatchEmbed(patch_size, embed_dim)
    num_patches = (img_size // patch_size) ** 2
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, embed_dim) * .02)
    self.blocks = nn.Sequential(*[TimmBlock(embed_dim, num_heads, mlp_ratio)
                                  for _ in range(depth)])
    self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
    self.head = nn.Linear(embed_dim, num_classes)

  def forward_features(self, x):
    assert x.shape[-2:] == (self.img_size, self.img_size), x.shape
    x = self.patch_embed(x)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
    return self.norm(self.blocks(x))

  def forward(self, x):
    return self.head(self.forward_features(x)[:, 0])


class MLPBlock(nn.Sequential):
  """torchvision's MLPBlock, an MLP(in, [mlp_dim, in]): Linear, GELU, Dropout, Linear, Dropout."""

  def __init__(self, dim, mlp_dim):
    super().__init__(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(0.0),
                     nn.Linear(mlp_dim, dim), nn.Dropout(0.0))


class EncoderBlock(nn.Module):

  def __init__(self, num_heads, hidden_dim, mlp_dim):
    super().__init__()
    self.ln_1 = nn.LayerNorm(hidden_dim, eps=1e-6)
    self.self_attention = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
    self.dropout = nn.Dropout(0.0)
    self.ln_2 = nn.LayerNorm(hidden_dim, eps=1e-6)
    self.mlp = MLPBlock(hidden_dim, mlp_dim)

  def forward(self, inputs):
    x = self.ln_1(inputs)
    x, _ = self.self_attention(x, x, x, need_weights=False)
    x = self.dropout(x) + inputs
    return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):

  def __init__(self, seq_length, num_layers, num_heads, hidden_dim, mlp_dim):
    super().__init__()
    self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
    self.dropout = nn.Dropout(0.0)
    self.layers = nn.Sequential(OrderedDict(
        (f'encoder_layer_{i}', EncoderBlock(num_heads, hidden_dim, mlp_dim))
        for i in range(num_layers)))
    self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

  def forward(self, x):
    return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class TorchvisionViT(nn.Module):

  def __init__(self, image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768,
               mlp_dim=3072, num_classes=1000):
    super().__init__()
    self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
    self.conv_proj = nn.Conv2d(3, hidden_dim, patch_size, stride=patch_size)
    seq_length = (image_size // patch_size) ** 2 + 1
    self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
    self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim)
    self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))

  def forward(self, x):
    n, _, h, w = x.shape
    assert h == w == self.image_size, x.shape
    x = self.conv_proj(x).reshape(n, self.hidden_dim, -1).permute(0, 2, 1)
    x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
    return self.heads(self.encoder(x)[:, 0])


def timm_vit(name, num_classes=1000, **overrides):
  dim, depth, heads = SIZES[name]
  return TimmViT(**{**dict(embed_dim=dim, depth=depth, num_heads=heads, num_classes=num_classes),
                    **overrides})


def torchvision_vit(name, num_classes=1000, **overrides):
  dim, depth, heads = SIZES[name]
  return TorchvisionViT(**{**dict(hidden_dim=dim, num_layers=depth, num_heads=heads,
                                  mlp_dim=4 * dim, num_classes=num_classes), **overrides})


def randomize(module: nn.Module, seed: int = 0) -> None:
  """Every parameter random at a scale that keeps activations O(1) and every key visible.

  LayerNorm weights around 1 and biases, the class token and position
  embeddings well away from zero, so a swapped or missing tensor shows.
  """
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      leaf = name.rsplit('.', 1)[-1]
      if p.ndim == 1 and ('norm' in name or '.ln' in name or name.startswith('ln')) \
          and leaf == 'weight':
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))
      elif p.ndim >= 2 and leaf in ('weight', 'in_proj_weight'):
        fan_in = math.prod(p.shape[1:])
        p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
      else:  # Biases, class token, position embeddings.
        p.copy_(0.5 * torch.randn(p.shape, generator=generator))


def timm_state_to_torchvision(state: dict) -> dict:
  """A TimmViT state dict under TorchvisionViT's keys: the same network in the other layout."""
  out = {}
  for key, value in state.items():
    parts = key.split('.')
    if key == 'cls_token':
      new = 'class_token'
    elif key == 'pos_embed':
      new = 'encoder.pos_embedding'
    elif parts[0] == 'patch_embed':
      new = 'conv_proj.' + parts[-1]
    elif parts[0] == 'norm':
      new = 'encoder.ln.' + parts[-1]
    elif parts[0] == 'head':
      new = 'heads.head.' + parts[-1]
    else:
      layer = f'encoder.layers.encoder_layer_{parts[1]}.'
      inner = {'norm1': 'ln_1', 'norm2': 'ln_2', 'attn.proj': 'self_attention.out_proj',
               'mlp.fc1': 'mlp.0', 'mlp.fc2': 'mlp.3'}
      module = '.'.join(parts[2:-1])
      if module == 'attn.qkv':
        new = layer + 'self_attention.in_proj_' + parts[-1]
      else:
        new = layer + inner[module] + '.' + parts[-1]
    out[new] = value
  return out


def resample_abs_pos_embed(posemb, new_size, num_prefix_tokens=1, interpolation='bicubic',
                           antialias=True):
  """timm.layers.resample_abs_pos_embed: the grid after the prefix tokens, F.interpolate'd."""
  num_pos_tokens = posemb.shape[1]
  if new_size[0] * new_size[1] + num_prefix_tokens == num_pos_tokens:
    return posemb
  hw = int(math.sqrt(num_pos_tokens - num_prefix_tokens))
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
  dim, dtype = grid.shape[-1], grid.dtype
  grid = grid.float().reshape(1, hw, hw, -1).permute(0, 3, 1, 2)
  grid = F.interpolate(grid, size=new_size, mode=interpolation, antialias=antialias)
  grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(dtype)
  return torch.cat([prefix, grid], dim=1)
