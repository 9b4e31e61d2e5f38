"""CIFAR-10 from TFDS with He et al.'s ResNet-56 recipe (2016, sec. 4.2).

160 epochs of SGD (lr 0.1, momentum 0.9, weight decay 1e-4, batch 128), the
learning rate divided by 10 at epochs 80 and 120; 4-pixel padded random crops
and horizontal flips. Validation: 5,000 training images held out (CIFAR-10
ships only train and test).
"""

from jaxcls.config import default_config


def get_config():
  config = default_config()
  config.data.source = 'tfds:cifar10'
  config.data.split = (0.9, 0.1, 0.0)
  config.data.mean = (0.4914, 0.4822, 0.4465)
  config.data.std = (0.2470, 0.2435, 0.2616)
  config.data.augment.random_crop_padding = 4
  config.data.augment.horizontal_flip = True
  config.model.name = 'cifar_resnet56'
  config.model.width = 0
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = 'step'
  config.optimizer.warmup_epochs = 1.0
  config.optimizer.decay_epochs = (80, 120)
  config.train.num_epochs = 160
  config.train.batch_size = 128
  config.train.log_every_steps = 100
  return config
