"""A PyTorch reference VGG whose state_dict keys and shapes are torchvision's.

torchvision does not import on these machines, so the parity tests carry this
transcription of torchvision.models.vgg (`VGG`, `make_layers`, `cfgs`), with a
`width` (torchvision: 64) that scales every convolution and the classifier's
hidden width (4096 at width 64) for narrow test models.
"""

import torch
from torch import nn

cfgs = {
    'A': [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
    'B': [64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
    'D': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'],
    'E': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512,
          512, 512, 'M'],
}


class VGG(nn.Module):

  def __init__(self, features, num_classes=1000, dropout=0.5, width=64):
    super().__init__()
    hidden = 4096 * width // 64
    self.features = features
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
        nn.Linear(512 * width // 64 * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
        nn.Linear(hidden, num_classes))
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        nn.init.constant_(m.bias, 0)
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)
      elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0, 0.01)
        nn.init.constant_(m.bias, 0)

  def forward(self, x):
    x = self.avgpool(self.features(x))
    return self.classifier(torch.flatten(x, 1))


def make_layers(cfg, batch_norm=False, width=64):
  layers, in_ch = [], 3
  for v in cfg:
    if v == 'M':
      layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
    else:
      out_ch = v * width // 64
      conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
      layers += [conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)] if batch_norm else [
          conv, nn.ReLU(inplace=True)]
      in_ch = out_ch
  return nn.Sequential(*layers)


_DEPTHS = {'vgg11': 'A', 'vgg13': 'B', 'vgg16': 'D', 'vgg19': 'E'}


def vgg(name, num_classes=1000, width=64):
  """'vgg16' or 'vgg16_bn' etc., as torchvision.models.vgg16[_bn](num_classes=...)."""
  depth, batch_norm = name.removesuffix('_bn'), name.endswith('_bn')
  return VGG(make_layers(cfgs[_DEPTHS[depth]], batch_norm, width), num_classes, width=width)
