"""A PyTorch reference ResNet whose state_dict keys and shapes are torchvision's.

torchvision does not import on these machines, so the parity tests carry this
transcription of torchvision.models.resnet (v1.5: stride in the 3x3 conv) and
of the CIFAR ResNets in the same layout (chenyaofo/pytorch-cifar-models).
"""

import torch
from torch import nn


def conv3x3(in_ch, out_ch, stride=1):
  return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch, out_ch, stride=1):
  return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, in_ch, ch, stride=1, downsample=None):
    super().__init__()
    self.conv1 = conv3x3(in_ch, ch, stride)
    self.bn1 = nn.BatchNorm2d(ch)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = conv3x3(ch, ch)
    self.bn2 = nn.BatchNorm2d(ch)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, in_ch, ch, stride=1, downsample=None):
    super().__init__()
    self.conv1 = conv1x1(in_ch, ch)
    self.bn1 = nn.BatchNorm2d(ch)
    self.conv2 = conv3x3(ch, ch, stride)
    self.bn2 = nn.BatchNorm2d(ch)
    self.conv3 = conv1x1(ch, ch * 4)
    self.bn3 = nn.BatchNorm2d(ch * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


class ResNet(nn.Module):

  def __init__(self, block, layers, num_classes=1000, width=64, cifar=False):
    super().__init__()
    self.cifar = cifar
    self.in_ch = width
    if cifar:
      self.conv1 = conv3x3(3, width)
    else:
      self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
      self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    for i, blocks in enumerate(layers):
      setattr(self, f'layer{i + 1}', self._make_layer(block, width * 2**i, blocks, 1 if i == 0 else 2))
    self.num_layers = len(layers)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(self.in_ch, num_classes)

  def _make_layer(self, block, ch, blocks, stride):
    downsample = None
    if stride != 1 or self.in_ch != ch * block.expansion:
      downsample = nn.Sequential(conv1x1(self.in_ch, ch * block.expansion, stride),
                                 nn.BatchNorm2d(ch * block.expansion))
    layers = [block(self.in_ch, ch, stride, downsample)]
    self.in_ch = ch * block.expansion
    layers += [block(self.in_ch, ch) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.relu(self.bn1(self.conv1(x)))
    if not self.cifar:
      x = self.maxpool(x)
    for i in range(self.num_layers):
      x = getattr(self, f'layer{i + 1}')(x)
    return self.fc(torch.flatten(self.avgpool(x), 1))


ARCHS = {
    'resnet18': dict(block=BasicBlock, layers=[2, 2, 2, 2]),
    'resnet34': dict(block=BasicBlock, layers=[3, 4, 6, 3]),
    'resnet50': dict(block=Bottleneck, layers=[3, 4, 6, 3]),
    'resnet101': dict(block=Bottleneck, layers=[3, 4, 23, 3]),
    'resnet152': dict(block=Bottleneck, layers=[3, 8, 36, 3]),
    'cifar_resnet20': dict(block=BasicBlock, layers=[3] * 3, cifar=True, width=16),
    'cifar_resnet32': dict(block=BasicBlock, layers=[5] * 3, cifar=True, width=16),
    'cifar_resnet56': dict(block=BasicBlock, layers=[9] * 3, cifar=True, width=16),
}


def resnet(name, **kwargs):
  return ResNet(**{**ARCHS[name], **kwargs})
