"""Model zoo: `create_model(name, num_classes, ...)` over a registry of nnx modules.

Every model exposes `features(x) -> [batch, channels]` (the backbone, pooled) and
a classifier head at `head_name`, and names its parameter groups from input to
output (`group_patterns`), so strategies that freeze, unfreeze or replace parts
work the same on every architecture (`jaxcls.training.finetune`).
"""

from jaxcls.models import resnet as _resnet  # registers the ResNets
from jaxcls.models import convnext as _convnext  # registers the ConvNeXts
from jaxcls.models import efficientnet as _efficientnet  # registers EfficientNet B0-B7, Lite0-4
from jaxcls.models import mobilenet as _mobilenet  # registers MobileNetV2
from jaxcls.models import vgg as _vgg  # registers the VGGs
from jaxcls.models.registry import create_model, list_models, model_from_config, register

__all__ = ['create_model', 'list_models', 'model_from_config', 'register']
