"""A PyTorch reference GoogLeNet whose state_dict keys and shapes are torchvision's.

torchvision does not import on these machines, so the parity tests carry this
transcription of torchvision.models.googlenet: BasicConv2d (conv without bias,
BatchNorm eps=0.001, ReLU), Inception with torchvision's 3x3 (not 5x5)
`branch3`, InceptionAux on inception4a and inception4d, ceil-mode max-pools and
`transform_input`. `width` scales every channel count by width / 64 (at least
1) for small tests; at 64 the layers' sizes are torchvision's.
"""

import torch
import torch.nn.functional as F
from torch import nn

# (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) of torchvision's Inception blocks.
INCEPTIONS = {
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


class BasicConv2d(nn.Module):

  def __init__(self, in_channels, out_channels, **kwargs):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
    self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):

  def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
    super().__init__()
    self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
    self.branch2 = nn.Sequential(
        BasicConv2d(in_channels, ch3x3red, kernel_size=1),
        BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
    self.branch3 = nn.Sequential(
        BasicConv2d(in_channels, ch5x5red, kernel_size=1),
        # kernel_size=3 instead of 5: torchvision's known deviation (pytorch/vision#906).
        BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1))
    self.branch4 = nn.Sequential(
        nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
        BasicConv2d(in_channels, pool_proj, kernel_size=1))
    self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

  def forward(self, x):
    return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):

  def __init__(self, in_channels, num_classes, dropout=0.7, conv_channels=128, hidden=1024):
    super().__init__()
    self.conv = BasicConv2d(in_channels, conv_channels, kernel_size=1)
    self.fc1 = nn.Linear(conv_channels * 16, hidden)
    self.fc2 = nn.Linear(hidden, num_classes)
    self.dropout = nn.Dropout(p=dropout)

  def forward(self, x):
    x = F.adaptive_avg_pool2d(x, (4, 4))
    x = self.conv(x)
    x = torch.flatten(x, 1)
    x = F.relu(self.fc1(x), inplace=True)
    x = self.dropout(x)
    return self.fc2(x)


class GoogLeNet(nn.Module):
  """torchvision's GoogLeNet. Train mode with aux_logits returns (logits, aux2, aux1) as
  torchvision's GoogLeNetOutputs(logits, aux_logits2, aux_logits1); otherwise the logits."""

  def __init__(self, num_classes=1000, aux_logits=True, transform_input=False, dropout=0.2,
               dropout_aux=0.7, width=64):
    super().__init__()
    ch = lambda c: max(1, c * width // 64)  # noqa: E731
    self.aux_logits = aux_logits
    self.transform_input = transform_input
    self.conv1 = BasicConv2d(3, ch(64), kernel_size=7, stride=2, padding=3)
    self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
    self.conv2 = BasicConv2d(ch(64), ch(64), kernel_size=1)
    self.conv3 = BasicConv2d(ch(64), ch(192), kernel_size=3, padding=1)
    self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
    in_channels, outputs = ch(192), {}
    for name, channels in INCEPTIONS.items():
      block = Inception(in_channels, *map(ch, channels))
      setattr(self, name, block)
      in_channels = outputs[name] = block.out_channels
      if name == 'inception3b':
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
      if name == 'inception4e':
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
    if aux_logits:
      self.aux1 = InceptionAux(outputs['inception4a'], num_classes, dropout_aux, ch(128), ch(1024))
      self.aux2 = InceptionAux(outputs['inception4d'], num_classes, dropout_aux, ch(128), ch(1024))
    else:
      self.aux1 = None
      self.aux2 = None
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.dropout = nn.Dropout(p=dropout)
    self.fc = nn.Linear(in_channels, num_classes)

  def _transform_input(self, x):
    if self.transform_input:
      x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
      x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
      x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
      x = torch.cat((x_ch0, x_ch1, x_ch2), 1)
    return x

  def forward(self, x):
    x = self._transform_input(x)
    x = self.maxpool1(self.conv1(x))
    x = self.maxpool2(self.conv3(self.conv2(x)))
    x = self.maxpool3(self.inception3b(self.inception3a(x)))
    x = self.inception4a(x)
    aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
    x = self.inception4d(self.inception4c(self.inception4b(x)))
    aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
    x = self.maxpool4(self.inception4e(x))
    x = self.inception5b(self.inception5a(x))
    x = torch.flatten(self.avgpool(x), 1)
    x = self.fc(self.dropout(x))
    if self.training and self.aux_logits:
      return x, aux2, aux1
    return x


def randomize(module: nn.Module, seed: int = 0) -> None:
  """He-scaled weights, non-trivial biases, BatchNorm affines and running statistics.

  torchvision's init (std 0.01) would leave eval-mode activations to the
  BatchNorm biases after a few layers, and the logits blind to most weights.
  """
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * (2 / fan_in)**0.5)
        if m.bias is not None:
          m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
      elif isinstance(m, nn.BatchNorm2d):
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
        m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
