"""PyTorch reference ConvNeXts: torchvision's layout, and timm's module naming.

torchvision and timm do not import on these machines, so the parity tests
carry transcriptions: `ConvNeXt` of torchvision.models.convnext, whose
state_dict keys and shapes are torchvision's (features.{i}, block.{0,2,3,5},
layer_scale [C, 1, 1], classifier.{0,2}), and `TimmConvNeXt` of
timm.models.convnext with the default options of the `convnext_*` models
(patch stem, conv_mlp=False: stem.{0,1}, stages.{i}.downsample.{0,1},
stages.{i}.blocks.{j}.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma [C]},
head.{norm,fc}).
"""

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

SIZES = {
    'convnext_tiny': ((3, 3, 9, 3), (96, 192, 384, 768)),
    'convnext_small': ((3, 3, 27, 3), (96, 192, 384, 768)),
    'convnext_base': ((3, 3, 27, 3), (128, 256, 512, 1024)),
    'convnext_large': ((3, 3, 27, 3), (192, 384, 768, 1536)),
}


class LayerNorm2d(nn.LayerNorm):
  """LayerNorm over the channels of an NCHW tensor (torchvision's and timm's)."""

  def forward(self, x):
    x = x.permute(0, 2, 3, 1)
    x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
    return x.permute(0, 3, 1, 2)


class Permute(nn.Module):

  def __init__(self, dims):
    super().__init__()
    self.dims = dims

  def forward(self, x):
    return torch.permute(x, self.dims)


def drop_path(x, p, training):
  """torchvision's stochastic_depth(mode='row') == timm's drop_path."""
  if not training or p == 0.0:
    return x
  survival = 1.0 - p
  noise = torch.empty([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype).bernoulli_(survival)
  return x * noise / survival


class StochasticDepth(nn.Module):

  def __init__(self, p):
    super().__init__()
    self.p = p

  def forward(self, x):
    return drop_path(x, self.p, self.training)


class CNBlock(nn.Module):

  def __init__(self, dim, layer_scale, stochastic_depth_prob):
    super().__init__()
    self.block = nn.Sequential(
        nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
        Permute([0, 2, 3, 1]),
        nn.LayerNorm(dim, eps=1e-6),
        nn.Linear(dim, 4 * dim, bias=True),
        nn.GELU(),
        nn.Linear(4 * dim, dim, bias=True),
        Permute([0, 3, 1, 2]),
    )
    self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
    self.stochastic_depth = StochasticDepth(stochastic_depth_prob)

  def forward(self, x):
    return self.stochastic_depth(self.layer_scale * self.block(x)) + x


class ConvNeXt(nn.Module):
  """torchvision.models.ConvNeXt with its CNBlockConfig list spelled as depths and dims."""

  def __init__(self, depths, dims, num_classes=1000, stochastic_depth_prob=0.0,
               layer_scale=1e-6):
    super().__init__()
    norm_layer = partial(LayerNorm2d, eps=1e-6)
    # Conv2dNormActivation(3, dims[0], 4, 4, padding=0, activation_layer=None, bias=True).
    layers = [nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4, padding=0, bias=True),
                            norm_layer(dims[0]))]
    total_stage_blocks = sum(depths)
    stage_block_id = 0
    for i, (depth, dim) in enumerate(zip(depths, dims)):
      stage = []
      for _ in range(depth):
        sd_prob = stochastic_depth_prob * stage_block_id / (total_stage_blocks - 1.0)
        stage.append(CNBlock(dim, layer_scale, sd_prob))
        stage_block_id += 1
      layers.append(nn.Sequential(*stage))
      if i + 1 < len(dims):
        layers.append(nn.Sequential(norm_layer(dim),
                                    nn.Conv2d(dim, dims[i + 1], kernel_size=2, stride=2)))
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.classifier = nn.Sequential(norm_layer(dims[-1]), nn.Flatten(1),
                                    nn.Linear(dims[-1], num_classes))
    for m in self.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
          nn.init.zeros_(m.bias)

  def forward(self, x):
    return self.classifier(self.avgpool(self.features(x)))


class Mlp(nn.Module):
  """timm.layers.Mlp as the ConvNeXt block builds it (use_conv=False, no norm, no dropout)."""

  def __init__(self, in_features, hidden_features):
    super().__init__()
    self.fc1 = nn.Linear(in_features, hidden_features)
    self.act = nn.GELU()
    self.drop1 = nn.Dropout(0.0)
    self.norm = nn.Identity()
    self.fc2 = nn.Linear(hidden_features, in_features)
    self.drop2 = nn.Dropout(0.0)

  def forward(self, x):
    return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class ConvNeXtBlock(nn.Module):
  """timm's ConvNeXtBlock, conv_mlp=False: NHWC LayerNorm and Linear MLP, gamma [C]."""

  def __init__(self, dim, ls_init_value=1e-6, drop_path_rate=0.0):
    super().__init__()
    self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True)
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, 4 * dim)
    self.gamma = nn.Parameter(ls_init_value * torch.ones(dim))
    self.shortcut = nn.Identity()
    self.drop_path_rate = drop_path_rate

  def forward(self, x):
    shortcut = x
    x = self.conv_dw(x)
    x = x.permute(0, 2, 3, 1)
    x = self.mlp(self.norm(x))
    x = x.permute(0, 3, 1, 2)
    x = x.mul(self.gamma.reshape(1, -1, 1, 1))
    return drop_path(x, self.drop_path_rate, self.training) + self.shortcut(shortcut)


class ConvNeXtStage(nn.Module):

  def __init__(self, in_chs, out_chs, stride, depth, drop_path_rates):
    super().__init__()
    if in_chs != out_chs or stride > 1:
      self.downsample = nn.Sequential(LayerNorm2d(in_chs, eps=1e-6),
                                      nn.Conv2d(in_chs, out_chs, kernel_size=2, stride=stride))
    else:
      self.downsample = nn.Identity()
    self.blocks = nn.Sequential(*[ConvNeXtBlock(out_chs, drop_path_rate=r)
                                  for r in drop_path_rates[:depth]])

  def forward(self, x):
    return self.blocks(self.downsample(x))


class NormMlpClassifierHead(nn.Module):
  """timm's head of ConvNeXt (head_norm_first=False, no hidden layer): pool, norm, fc."""

  def __init__(self, in_features, num_classes):
    super().__init__()
    self.global_pool = nn.AdaptiveAvgPool2d(1)
    self.norm = LayerNorm2d(in_features, eps=1e-6)
    self.flatten = nn.Flatten(1)
    self.pre_logits = nn.Identity()
    self.drop = nn.Dropout(0.0)
    self.fc = nn.Linear(in_features, num_classes)

  def forward(self, x):
    x = self.flatten(self.norm(self.global_pool(x)))
    return self.fc(self.drop(self.pre_logits(x)))


class TimmConvNeXt(nn.Module):
  """timm.models.convnext.ConvNeXt with the `convnext_*` defaults: 4x4 patch stem, stride 32."""

  def __init__(self, depths, dims, num_classes=1000, drop_path_rate=0.0):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4, bias=True),
                              LayerNorm2d(dims[0], eps=1e-6))
    total = sum(depths)  # torch.linspace(0, drop_path_rate, total), split by stage.
    linear = [drop_path_rate * k / max(total - 1, 1) for k in range(total)]
    rates = [linear[sum(depths[:i]):sum(depths[:i + 1])] for i in range(len(depths))]
    stages, prev_chs = [], dims[0]
    for i, (depth, dim) in enumerate(zip(depths, dims)):
      stages.append(ConvNeXtStage(prev_chs, dim, 2 if i > 0 else 1, depth, rates[i]))
      prev_chs = dim
    self.stages = nn.Sequential(*stages)
    self.norm_pre = nn.Identity()
    self.head = NormMlpClassifierHead(dims[-1], num_classes)

  def forward(self, x):
    return self.head(self.norm_pre(self.stages(self.stem(x))))


def convnext(name, **kwargs):
  depths, dims = SIZES[name]
  return ConvNeXt(**{'depths': depths, 'dims': dims, **kwargs})


def randomize(module: nn.Module, seed: int = 0) -> None:
  """Non-trivial layer scales and norm affines, so both are really tested.

  Layer scales of 1e-6 would hide nearly every block from the logits.
  """
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name.endswith(('layer_scale', 'gamma')):
        p.copy_(torch.rand(p.shape, generator=generator) + 0.5)
    for m in module.modules():
      if isinstance(m, nn.LayerNorm):
        m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
      elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
        m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.02)
