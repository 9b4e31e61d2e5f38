"""Model zoo: `create_model(name, num_classes, ...)` over a registry of nnx modules.

Every model implements one interface, `jaxcls.models.interface.Classifier`:
`features(x) -> [batch, channels]` (the backbone, pooled), a classifier head at
`head_name`, its parameter groups from input to output (`group_patterns`), the
last spatial stage Grad-CAM reads (`last_stage`) and the checkpoint layouts it
reads, so strategies that freeze, unfreeze or replace parts, explanations and
conversion work the same on every architecture and know no family by name.
"""

from jaxcls.models import resnet as _resnet  # registers the ResNets
from jaxcls.models import convnext as _convnext  # registers the ConvNeXts
from jaxcls.models import efficientnet as _efficientnet  # registers EfficientNet B0-B7, Lite0-4
from jaxcls.models import mobilenet as _mobilenet  # registers MobileNetV2
from jaxcls.models import vgg as _vgg  # registers the VGGs
from jaxcls.models import googlenet as _googlenet  # registers GoogLeNet (Inception v1)
from jaxcls.models import vit as _vit  # registers the Vision Transformers
from jaxcls.models.registry import create_model, list_models, model_from_config, register

__all__ = ['create_model', 'list_models', 'model_from_config', 'register']
