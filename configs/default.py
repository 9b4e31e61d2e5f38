"""Default configuration: a narrow CIFAR-style ResNet on scikit-learn's digits.

This file is the schema of every jaxcls config: each field used anywhere is
defined and documented here once, and `jaxcls.config.validate` rejects a config
with a key this file does not define or a value of another type. Variant
configs start from it and change a few fields, e.g.

    from jaxcls.config import default_config  # this file's get_config()
    def get_config():
      config = default_config()
      config.model.name = 'resnet18'
      return config

Any field can be overridden on the command line, e.g.
`--config.optimizer.learning_rate=0.01`.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Seed for parameter init, data order, augmentation and splits.
  config.seed = 0

  # ---------------------------------------------------------------- data ---
  config.data = data = ml_collections.ConfigDict()
  # Where examples come from:
  #   'digits'       scikit-learn's bundled 8x8 handwritten digits (1,797 real
  #                  images, 10 classes), upscaled to 32x32 RGB; offline.
  #   'tfds:NAME'    a TensorFlow Datasets data set, e.g. 'tfds:cifar10'.
  #   'folder:PATH'  one sub-folder per class of JPEG/PNG files, optionally
  #                  inside 'train'/'val'/'test' sub-folders.
  data.source = 'digits'
  # TFDS data directory (None: TFDS's default, ~/tensorflow_datasets).
  data.data_dir = config_dict.placeholder(str)
  # Whether TFDS may download and prepare a data set that is not there yet.
  data.download = True
  # Fractions (summing to 1) or example counts of (train, val, test), used for
  # the splits the source does not provide. When only val is missing, val is
  # carved from train in the proportion val / (train + val). The split is
  # stratified by class, drawn with `split_seed` and written to
  # WORKDIR/splits.json, which a rerun in the same workdir reuses.
  data.split = (0.8, 0.1, 0.1)
  data.split_seed = 0
  # Side of the square image the model sees. 0: the pretrained weights' input
  # size (with `resize_size` from their crop fraction when that is 0 too), or
  # 32 without pretrained weights.
  data.image_size = 0
  # Shorter side to resize to before the center crop to `image_size` (e.g. 256
  # for 224 crops, as ImageNet-pretrained models expect). 0: resize straight to
  # `image_size`.
  data.resize_size = 0
  # Per-channel mean and std in [0, 1] units; normalisation runs on the device
  # so that batches cross the host-to-device link as uint8. Empty: those the
  # pretrained weights were trained with, or 0.5 and 0.25 without them.
  data.mean = ()
  data.std = ()
  # Train-split augmentation (val/test are only resized and cropped).
  data.augment = ml_collections.ConfigDict()
  # Zero-pad each side by this many pixels, then crop back at random (0: off).
  data.augment.random_crop_padding = 2
  # Mirror left-right with probability 0.5 (off for digits: a mirrored 2 is
  # not a 2).
  data.augment.horizontal_flip = False
  # Grain worker processes (0: read and transform in this process).
  data.num_workers = 0
  # Threads that read and transform examples in each process.
  data.num_threads = 4
  # Batches prepared ahead of the training step, on the host and on the device.
  data.prefetch = 2

  # --------------------------------------------------------------- model ---
  config.model = model = ml_collections.ConfigDict()
  # A name from the `jaxcls.models` registry: resnet18/34/50/101/152 (the
  # torchvision layout) or cifar_resnet20/32/56 (He et al. 2016, sec. 4.2).
  model.name = 'cifar_resnet20'
  # Channels of the first stage; 0: the architecture's own (16 for the CIFAR
  # ResNets, 64 for the ImageNet ones). Narrow models train fast on CPU: at 8,
  # this default reaches ~99% test accuracy on digits in two minutes on 2 cores.
  model.width = 8
  # Pretrained weights: a directory written by `python -m jaxcls.convert`, or a
  # PyTorch .pth/.safetensors file converted on the fly. Everything loads
  # strictly except a classifier head of another number of classes, which is
  # freshly initialised. None: train from scratch.
  model.pretrained = config_dict.placeholder(str)
  # Compute dtype of activations: 'float32' or 'bfloat16'. Parameters, the
  # optimizer state and the loss stay in float32.
  model.dtype = 'float32'

  # ----------------------------------------------------------- optimizer ---
  config.optimizer = opt = ml_collections.ConfigDict()
  # 'sgd' (momentum, optionally Nesterov) or 'adamw'.
  opt.name = 'sgd'
  # Peak learning rate, reached after warm-up.
  opt.learning_rate = 0.1
  opt.momentum = 0.9
  opt.nesterov = True
  # Decoupled (AdamW) or L2-style (SGD) weight decay; never applied to biases
  # and normalisation parameters.
  opt.weight_decay = 5e-4
  opt.b1 = 0.9
  opt.b2 = 0.999
  # Learning-rate schedule: 'cosine' (to zero), 'step' or 'constant'; all
  # start with `warmup_epochs` of linear warm-up from zero.
  opt.schedule = 'cosine'
  opt.warmup_epochs = 1.0
  # For 'step': multiply the learning rate by `decay_factor` at these epochs.
  opt.decay_epochs = (30, 60, 80)
  opt.decay_factor = 0.1

  # ------------------------------------------------------------ training ---
  config.train = train = ml_collections.ConfigDict()
  train.num_epochs = 15
  # Global batch size, split evenly across all devices.
  train.batch_size = 64
  # Global batch size for validation and test (0: same as `batch_size`).
  train.eval_batch_size = 0
  # Label smoothing of the cross-entropy targets (0: off).
  train.label_smoothing = 0.0
  # Write training metrics every this many steps (they are averaged over
  # those steps on the device and fetched once).
  train.log_every_steps = 20

  # --------------------------------------------------------- checkpoints ---
  config.checkpoint = ckpt = ml_collections.ConfigDict()
  # Checkpoint after every epoch; keep the latest `keep` of them, and the best
  # one by `best_metric` (a validation metric) as well.
  ckpt.keep = 2
  ckpt.best_metric = 'accuracy'
  ckpt.best_mode = 'max'

  # ---------------------------------------------------------- evaluation ---
  # Read by `python -m jaxcls.evaluate` and by the report every run writes to
  # WORKDIR/report/ (whose flags can override them for an existing run).
  config.evaluate = evaluate = ml_collections.ConfigDict()
  # Test-time augmentation, reported beside the plain result: the softmax
  # probabilities of every view of an image are averaged. With `tta_flip`,
  # each view is also seen mirrored left-right (leave it off where a mirror
  # changes the class, as for digits).
  evaluate.tta_flip = False
  # 1: the image as evaluated. 5: four corner crops and the center crop of the
  # image zero-padded by `data.augment.random_crop_padding` pixels per side
  # (or image_size // 8 when that is 0), so every crop keeps the model's input
  # size, the corners are shifts the model saw in training, and the center
  # crop is the plain image.
  evaluate.tta_crops = 1
  # Ensemble (average the softmax probabilities of) the best this many
  # checkpoints by `checkpoint.best_metric`. Only those on disk count: the
  # latest `checkpoint.keep` and the best, so at most keep + 1.
  evaluate.top_k_checkpoints = 1
  return config
