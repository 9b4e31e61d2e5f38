"""CIFAR-10 with an ImageNet ResNet-18, one fine-tuning strategy per row, 32 -> 224 pixels.

The published comparison this reproduces (10 epochs): full fine-tuning 92.95%,
partial (last stage + head) 90.56%, progressive unfreezing 88.88%. The
weights are torchvision's, by their tag `resnet18.tv_in1k`, downloaded once on
first use into $JAXCLS_HOME (torch reads the .pth):

    for row in full partial feature_extraction gradual discriminative scratch; do
      python -m jaxcls.main --config configs/finetune_cifar10_resnet18.py:$row \\
          --workdir runs/cifar10_resnet18/$row
    done

(`--config.model.pretrained=PATH` takes a file or converted directory instead.)
The 32x32 images are resized straight to 224x224 (no center crop), normalised
with ImageNet's statistics, as the tag says.
ResNet-18's groups: stem, stage1..stage4, head.
"""

from jaxcls.config import apply_overrides, default_config

ROWS = {
    'full': {},
    'partial': {'finetune.strategy': 'partial', 'finetune.trainable_groups': 1},
    'feature_extraction': {'finetune.strategy': 'feature_extraction',
                           'optimizer.learning_rate': 0.1},
    # The head, then stage4 at epoch 2, stage3 at 4, stage2 at 6, stage1 at 8.
    'gradual': {'finetune.strategy': 'gradual', 'finetune.unfreeze_every': 2},
    'discriminative': {'finetune.layer_decay': 0.7},
    'scratch': {'model.pretrained': None, 'optimizer.learning_rate': 0.1,
                'data.mean': (0.485, 0.456, 0.406), 'data.std': (0.229, 0.224, 0.225)},
}


def get_config(row: str = 'full'):
  if row not in ROWS:
    raise ValueError(f'configs/finetune_cifar10_resnet18.py:ROW: unknown row {row!r}; '
                     f'rows: {", ".join(ROWS)}')
  config = default_config()
  config.data.source = 'tfds:cifar10'
  config.data.split = (0.9, 0.1, 0.0)  # 5,000 training images held out for validation.
  config.data.image_size = 224
  config.data.resize_size = 0
  config.data.augment.random_crop_padding = 28  # 4 pixels of the 32x32 original.
  config.data.augment.horizontal_flip = True
  config.model.name = 'resnet18'
  config.model.width = 0
  config.model.pretrained = 'resnet18.tv_in1k'
  config.optimizer.learning_rate = 0.01
  config.optimizer.weight_decay = 5e-4
  config.optimizer.warmup_epochs = 0.5
  config.train.num_epochs = 10
  config.train.batch_size = 128
  config.train.log_every_steps = 50
  return apply_overrides(config, ROWS[row])
