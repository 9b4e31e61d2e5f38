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
  # A source with its own val split but no test split (a folder with train/
  # and val/ only, as PyTorch's ants-vs-bees): 'val' tests on val (the log
  # says the figure is optimistic: the best checkpoint is chosen on it too);
  # 'split' draws test from train with `split` instead.
  data.missing_test = 'val'
  # Stratified k-fold cross-validation: with `num_folds` >= 2, test is drawn
  # by `split` as usual, the rest (train + val, val's share included) is dealt
  # into `num_folds` stratified parts with `split_seed`, and this run validates
  # on part `fold` (0-based) and trains on the others. A sweep over `fold`
  # (launch/sweeps/kfold.py) is the cross-validation. 0: off. Needs a source
  # without its own val split.
  data.num_folds = 0
  data.fold = 0
  # Side of the square image the model sees. 0: the pretrained weights' input
  # size (with `resize_size` from their crop fraction when that is 0 too), or
  # 32 without pretrained weights.
  data.image_size = 0
  # Shorter side to resize to before the center crop to `image_size` (e.g. 256
  # for 224 crops, as ImageNet-pretrained models expect). 0: resize straight to
  # `image_size`.
  data.resize_size = 0
  # Resampling of the host resize: 'bilinear' or 'bicubic'. Empty: the
  # pretrained weights' (TF's EfficientNets and timm's weights: bicubic), or
  # bilinear without them.
  data.interpolation = ''
  # Per-channel mean and std in [0, 1] units; normalisation runs on the device
  # so that batches cross the host-to-device link as uint8. Empty: those the
  # pretrained weights were trained with, or 0.5 and 0.25 without them.
  data.mean = ()
  data.std = ()
  # Train-split augmentation (val/test are only resized and cropped). Every op
  # but the crop padding is off by default. Random resized crop, crop padding
  # and flip run on the host (Grain); the rest run on the device inside the
  # train step (`jaxcls.data.device_augment`, in this order: policy, affine,
  # colour jitter, grayscale, blur, noise, erasing), each example drawing its
  # own parameters. Pixel units are fractions of the [0, 255] range.
  data.augment = aug = ml_collections.ConfigDict()
  # Instead of the resize: crop a random area fraction `scale` of the source
  # image with aspect ratio (width / height) log-uniform in `ratio`, then
  # resize to `image_size` (torchvision's RandomResizedCrop).
  aug.random_resized_crop = False
  aug.random_resized_crop_scale = (0.08, 1.0)
  aug.random_resized_crop_ratio = (3 / 4, 4 / 3)
  # Zero-pad each side by this many pixels, then crop back at random (0: off).
  aug.random_crop_padding = 2
  # Mirror left-right with probability 0.5 (off for digits: a mirrored 2 is
  # not a 2).
  aug.horizontal_flip = False
  # Random affine warp about the centre, bilinear, filled with black: rotation
  # uniform in +-`affine_degrees`, shift uniform in +-`affine_translate` of
  # the side, zoom uniform in `affine_scale`, x-shear in +-`affine_shear`
  # degrees (torchvision's RandomAffine).
  aug.affine_degrees = 0.0
  aug.affine_translate = 0.0
  aug.affine_scale = (1.0, 1.0)
  aug.affine_shear = 0.0
  # Colour jitter (torchvision's ColorJitter): brightness, contrast and
  # saturation factors uniform in [max(0, 1 - x), 1 + x]; hue shifted by up
  # to +-`hue` of a full turn (at most 0.5).
  aug.brightness = 0.0
  aug.contrast = 0.0
  aug.saturation = 0.0
  aug.hue = 0.0
  # Probability of converting to grayscale (kept as 3 equal channels).
  aug.grayscale_prob = 0.0
  # Gaussian blur with probability `blur_prob`, sigma (pixels) uniform in
  # `blur_sigma`, an odd `blur_kernel_size` square kernel, edges reflected.
  aug.blur_prob = 0.0
  aug.blur_sigma = (0.1, 2.0)
  aug.blur_kernel_size = 5
  # Std of additive Gaussian pixel noise (0: off).
  aug.noise_std = 0.0
  # Random erasing (Zhong et al. 2020) with probability `erasing_prob`: a box
  # of area fraction uniform in `erasing_scale`, aspect (height / width)
  # log-uniform in `erasing_ratio`, filled with `erasing_value` (negative:
  # uniform random noise per pixel, timm's mode='pixel').
  aug.erasing_prob = 0.0
  aug.erasing_scale = (0.02, 1 / 3)
  aug.erasing_ratio = (0.3, 3.3)
  aug.erasing_value = -1.0
  # Augmentation policy: '' (none), 'randaugment' (Cubuk et al. 2020:
  # `policy_num_ops` ops per image drawn from 14, each at `policy_magnitude`
  # out of 30) or 'trivialaugment' (Muller & Hutter 2021: one op per image
  # at a random magnitude, wider ranges; num_ops and magnitude unused).
  aug.policy = ''
  aug.policy_num_ops = 2
  aug.policy_magnitude = 9
  # Order of train examples: 'uniform' (each example once per epoch, shuffled)
  # or 'balanced' (every class equally often per epoch, minority classes
  # oversampled and majority ones subsampled, cycling through each class's
  # examples in a fresh random order), deterministic given `seed` and epoch.
  data.sampler = 'uniform'
  # Examples per train epoch (0: the train split's size); sets the steps per
  # epoch together with `train.batch_size`.
  data.epoch_examples = 0
  # For 'folder:' sources: every file is decoded once before training;
  # unreadable ones (truncated, not an image, empty) are skipped and listed in
  # WORKDIR/data_report.json. Above this fraction of them, the run stops.
  data.max_bad_fraction = 0.05
  # Grain worker processes (0: read and transform in this process).
  data.num_workers = 0
  # Threads that read and transform examples in each process.
  data.num_threads = 4
  # Batches prepared ahead of the training step, on the host and on the device.
  data.prefetch = 2
  # Hold the whole train split on every device (resized, uint8) and gather,
  # crop and flip each batch there: no per-step host work or transfer. For
  # small data sets (CIFAR-10: 150 MB) with fast models, where the host
  # pipeline cannot keep up. Not with `augment.random_resized_crop` or
  # several processes. Val and test still stream from the host.
  data.on_device = False

  # --------------------------------------------------------------- model ---
  config.model = model = ml_collections.ConfigDict()
  # A name from the `jaxcls.models` registry (`python -m jaxcls.cli.models`
  # lists them): resnet18/34/50/101/152 (the torchvision layout),
  # cifar_resnet20/32/56 (He et al. 2016, sec. 4.2), vgg11/13/16/19 and their
  # _bn variants, convnext_tiny/small/base/large, efficientnet_b0..b7,
  # efficientnet_lite0..lite4, mobilenet_v2, googlenet (torchvision's
  # Inception v1), vit_tiny/small/base_patch16 (timm's layout; torchvision's
  # vit_b_16 checkpoints read too).
  model.name = 'cifar_resnet20'
  # Channels of the first stage (of the stem for EfficientNet and MobileNetV2,
  # every layer scaling with it); 0: the architecture's own (16 for the CIFAR
  # ResNets, 64 for the ImageNet ones and VGG, 96 or more for ConvNeXt, 32 for
  # EfficientNet-B0 and MobileNetV2, 64 for GoogLeNet's conv1; a ViT's embedding
  # width, one attention head per 64). Narrow models train fast on CPU: at 8,
  # this default reaches ~99% test accuracy on digits in two minutes on 2 cores.
  model.width = 8
  # Pretrained weights: a tag such as 'efficientnet_lite0.tf_in1k' (`python -m
  # jaxcls.cli.models --pretrained` lists them; fetched into the cache on first
  # use), 'hf-hub:timm/REPO', a directory written by `python -m jaxcls.cli.convert`,
  # or a PyTorch .pth/.safetensors file converted on the fly. A tag, Hub repo or
  # converted directory also sets model.name (leave it and model.width at their
  # defaults) and the input fields left automatic (data.image_size,
  # resize_size, interpolation, mean, std). Everything loads strictly except a
  # classifier head of another number of classes, which is freshly initialised.
  # None: train from scratch.
  model.pretrained = config_dict.placeholder(str)
  # Compute dtype of activations: 'float32' or 'bfloat16'. Parameters, the
  # optimizer state and the loss stay in float32.
  model.dtype = 'float32'
  # How convolutions are lowered. 'auto': on CPU, the ones XLA:CPU is slow at
  # (3x3 on 2x2 and 1x1 maps, strided, pointwise, depthwise) run as a matmul over
  # patches or, depthwise, a sum of shifted inputs: 2.5-4x faster train steps for
  # ResNet-18/50, ConvNeXt, EfficientNet, MobileNetV2; XLA's convolution on GPU
  # and TPU and for the rest. 'xla': always XLA's (jaxcls/models/conv.py).
  model.conv_lowering = 'auto'
  # Classifier head: 'linear' (the architecture's own: one Linear for the
  # ResNets and ConvNeXts, dropout and a Linear for EfficientNet and
  # MobileNetV2, torchvision's three-layer classifier for VGG) or
  # 'mlp' (pooled features -> Dense(head_hidden) -> ReLU -> Dropout(head_dropout)
  # -> Dense(classes)), freshly initialised on top of the pretrained backbone.
  model.head = 'linear'
  model.head_hidden = 512
  model.head_dropout = 0.5
  # On pretrained weights, a fresh head (another number of classes, or an MLP
  # or multi-task head) starts with its output layer at zero, so at chance:
  # a random one on pretrained features starts confidently wrong and its first
  # gradients tear into the backbone (big_vision's head_zeroinit).
  model.head_zero_init = True
  # EfficientNet only: 'same' (TF's padding, as TF-trained weights need) or
  # 'symmetric' (torchvision's and timm's own weights), and the BatchNorm
  # epsilon (TF 1e-3, PyTorch 1e-5). Empty / 0: what the pretrained weights
  # need (a tag says; a raw file's key layout implies it), else 'same', 1e-3.
  model.padding = ''
  model.batch_norm_epsilon = 0.0
  # GoogLeNet only: its two auxiliary classifiers (on inception4a and 4d), which
  # help a deep net train on small data. While they train, the train loss adds
  # aux_weight (0.3, as the paper and torchvision's reference training) times
  # each one's loss; evaluation and prediction use the main head only. They
  # form the parameter group 'aux', which trains whenever inception4 does.
  model.aux_logits = False
  model.aux_weight = 0.3

  # --------------------------------------------------------- fine-tuning ---
  # Which parameter groups train, and how fast. Every model names its groups
  # from input to output (each model's `group_patterns`): ResNet stem,
  # stage1..stage4, head; CIFAR ResNets stem, stage1..stage3, head; VGG
  # block1..block5, head (its classifier); ConvNeXt stem, stage1..stage4, head;
  # EfficientNet (B0-B7, Lite0-4) and MobileNetV2 stem, stage1..stage7,
  # conv_head (the 1x1 convolution to the pooled features), head; GoogLeNet
  # stem, inception3, inception4, [aux: the auxiliary classifiers, which train
  # whenever inception4 does], inception5, head; ViT embed (patch embedding,
  # class token, position embeddings), block1..blockN (the last with the final
  # LayerNorm), head. Frozen
  # groups get no update and no weight decay, cost no backward pass, and their
  # BatchNorm layers use (and keep) their running statistics.
  config.finetune = finetune = ml_collections.ConfigDict()
  # 'full': everything trains. 'feature_extraction': only the head (a linear or
  # MLP probe, see model.head). 'partial': the last `trainable_groups` groups
  # before the head, and the head. 'gradual': groups unfreeze on a schedule.
  finetune.strategy = 'full'
  # For 'partial': how many groups before the head train (1: ResNet's stage4).
  finetune.trainable_groups = 1
  # For 'gradual': EPOCH:GROUP[,GROUP...] entries, e.g. '0:head 3:stage4
  # 6:stage3' (a group trains from its epoch on, with fresh optimizer moments)...
  finetune.unfreeze_schedule = ''
  # ...or, instead, the head from epoch 0 and one more group, from the output
  # side, every this many epochs (0: use unfreeze_schedule).
  finetune.unfreeze_every = 0
  # Discriminative learning rates, on top of any strategy: GROUP:MULTIPLIER
  # entries, e.g. 'stem:0.1 stage1:0.1 head:10', multiplying the schedule's
  # learning rate for that group...
  finetune.lr_multipliers = ''
  # ...and/or layer-wise decay: the head at the full rate, each group before it
  # at `layer_decay` times the next one's (e.g. 0.7; 0: off).
  finetune.layer_decay = 0.0
  # Feature extraction on cached features: where only the head trains and no random
  # augmentation or mixing comes before the backbone, its pooled features are a pure function
  # of the image, so each split's are computed once (eval mode, kept in memory and in
  # WORKDIR/feature_cache/, keyed by the weights, preprocessing, model and split) and the head
  # trains on them: the same model, batches and checkpoints, without the backbone's forward
  # pass per step; a gradual plan's first phase (the head alone) trains on them, the later
  # ones, with the backbone open, take the full step. 'auto': whenever that holds (the log
  # says which path and why); 'on': an error when it does not; 'off': never.
  finetune.cache_features = 'auto'

  # --------------------------------------------------------------- tasks ---
  # Several labels per image, encoded in the class names: with names ('mask',
  # 'gender', 'age') and separator '_', the class 'incorrect_female_old' is
  # mask=incorrect, gender=female, age=old. Empty names: one task, the class.
  config.tasks = tasks = ml_collections.ConfigDict()
  tasks.names = ()
  tasks.separator = '_'
  # 'combined': one head over the combined classes (e.g. 3x2x3 = 18), metrics
  # also reported per task. 'heads': one head per task on the shared backbone,
  # trained on the weighted sum of the per-task losses; its class scores are
  # the joint log-probabilities of the combinations.
  tasks.mode = 'combined'
  # Weight of each task's loss in 'heads' mode, in the order of `names`
  # (empty: all 1).
  tasks.loss_weights = ()

  # ----------------------------------------------------------- optimizer ---
  config.optimizer = opt = ml_collections.ConfigDict()
  # 'sgd' (momentum, optionally Nesterov), 'adamw', 'lamb' (Adam moments and a
  # per-tensor trust ratio, You et al. 2020: for large batches), 'lion' (the
  # sign of a momentum, Chen et al. 2023: take a 3-10x smaller learning rate
  # and a 3-10x larger weight decay than AdamW's, and b2=0.99 as the paper) or
  # 'rmsprop' (PyTorch's, as timm's 'rmsprop').
  opt.name = 'sgd'
  # Peak learning rate, reached after warm-up.
  opt.learning_rate = 0.1
  # Momentum of 'sgd' and 'rmsprop' (0: none); Nesterov's for 'sgd'.
  opt.momentum = 0.9
  opt.nesterov = True
  # Decoupled (AdamW, LAMB, Lion) or L2-style (SGD, RMSprop) weight decay; never
  # applied to biases and normalisation parameters.
  opt.weight_decay = 5e-4
  # Moment decays of 'adamw' and 'lamb'; Lion's interpolation (b1) and
  # momentum (b2) decays.
  opt.b1 = 0.9
  opt.b2 = 0.999
  # 'rmsprop': decay of the mean squared gradient (PyTorch's alpha; timm 0.9).
  opt.rmsprop_decay = 0.9
  # Gradient clipping, on the gradients of the trainable groups before the
  # optimizer and the learning-rate multipliers (timm's --clip-grad): scale
  # them to at most this global norm (0: off)...
  opt.clip_grad_norm = 0.0
  # ...and/or adaptive clipping (Brock et al. 2021, timm's --clip-mode agc):
  # each unit's gradient norm to at most this factor times its weights' norm
  # (e.g. 0.01; 0: off).
  opt.adaptive_clip = 0.0
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
  # Gradient accumulation: each step splits its batch into this many
  # micro-batches, run one after the other (a scan inside the jitted step), and
  # makes one optimizer update with their mean gradient, so a batch that does
  # not fit in memory at once still trains as `batch_size`: the step count,
  # schedule and data position do not change (1: off). BatchNorm in training
  # mode normalises each micro-batch by its own statistics and updates its
  # running averages once per micro-batch, in order, as PyTorch's accumulation
  # does; with BatchNorm frozen (or none) the step equals one of the whole
  # batch. Each micro-batch's size (`batch_size` / this) must be even and
  # divide by the device count.
  train.grad_accum_steps = 1
  # Global batch size for validation and test (0: same as `batch_size`).
  train.eval_batch_size = 0
  # An exponential moving average of the weights (timm's --model-ema): after
  # each step, ema = decay * ema + (1 - decay) * weights, BatchNorm's running
  # statistics averaged alike; kept in the train state and the checkpoints and
  # validated after each epoch beside the trained weights (0: off; 0.999 to
  # 0.9999 for runs of thousands of steps).
  train.ema_decay = 0.0
  # Ramp the decay up as timm does (1 - (1 + step)^(-2/3), at most
  # `ema_decay`), so the average of a short run follows its weights rather than
  # staying at the pretrained ones.
  train.ema_warmup = True
  # Which weights an epoch's checkpoint stands for, and so which are tested,
  # reopened (evaluate, predict, explain) and exported: 'better': the better of
  # the two by checkpoint.best_metric on validation, epoch by epoch; 'ema' or
  # 'raw': always those. The epoch's `val` metrics (checkpoint choice, plateau,
  # early stopping, sweeps) are the chosen weights'; results.json keeps both
  # (`val_raw`, `val_ema`).
  train.ema_select = 'better'
  # Label smoothing of the training loss's targets (0: off); applied once, in
  # the loss, also under Mixup/CutMix (smoothing and mixing commute).
  train.label_smoothing = 0.0
  # A step whose loss or gradient norm is not finite never updates the state;
  # 'stop': training then stops with an error naming the step and the last
  # good checkpoint; 'skip': training goes on without that step.
  train.nonfinite = 'stop'
  # With 'skip': an epoch in which more than this fraction of the steps were
  # skipped stops the run (a model that diverged does not train on), as do
  # validation metrics that are not finite; results.json counts each epoch's
  # skipped steps (`skipped_steps`) and leaves them out of its train loss.
  train.max_skipped_fraction = 0.5
  # Write training metrics every this many steps (they are averaged over
  # those steps on the device and fetched once).
  train.log_every_steps = 20
  # Trace this many train steps with `jax.profiler` (0: off), from the step
  # after the first (which compiles), into WORKDIR/plugins/profile/: open with
  # `tensorboard --logdir WORKDIR` (Profile tab, from the
  # tensorboard-plugin-profile package) or ui.perfetto.dev. Ten steps show
  # the steady state; traces grow with every step.
  train.profile_steps = 0

  # --------------------------------------------------------------- mixup ---
  # Mixup and CutMix inside the jitted train step (timm's `Mixup`): each image
  # is mixed with its partner in the batch and the one-hot targets alike (every
  # task's, with per-task heads). Train accuracies are then measured against
  # the dominant label and named `accuracy_vs_dominant_label`.
  config.mixup = mixup = ml_collections.ConfigDict()
  # Beta(alpha, alpha) parameters of the mixing weight; 0 switches the method
  # off, both 0: no mixing (e.g. 0.2 and 1.0, as for ImageNet).
  mixup.mixup_alpha = 0.0
  mixup.cutmix_alpha = 0.0
  # Probability of mixing a batch ('batch') or an example ('elem')...
  mixup.prob = 1.0
  # ...and, with both alphas positive, of CutMix rather than Mixup.
  mixup.switch_prob = 0.5
  # 'batch': one weight, method and box per batch; 'elem': per example.
  mixup.mode = 'batch'
  # Train without mixing from this epoch on (0-based, timm's --mixup-off-epoch:
  # 10 mixes the first 10 epochs; 0: mix to the end), so the last epochs see
  # clean images. The train accuracy keeps its name for the whole run.
  mixup.off_epoch = 0

  # ---------------------------------------------------------------- loss ---
  # The training loss (validation and test report the plain cross-entropy).
  # All losses take the soft targets of smoothing and mixing.
  config.loss = loss = ml_collections.ConfigDict()
  # 'cross_entropy' or 'focal' (softmax focal loss, Lin et al. 2017:
  # -sum_c alpha_c (1 - p_c)^gamma t_c log p_c; gamma 0 is cross-entropy).
  loss.name = 'cross_entropy'
  loss.focal_gamma = 2.0
  # The focal loss's alpha: one value for all classes, one per class, or
  # empty: 1.
  loss.focal_alpha = ()
  # Per-class loss weights from the train split's class counts: 'none',
  # 'inverse_frequency' (proportional to 1 / count) or 'effective_number'
  # (Cui et al. 2019: (1 - beta) / (1 - beta^count), beta `class_weights_beta`);
  # normalised to sum to the class count. Each example's loss is multiplied by
  # its (mixed) targets' weight. Not with tasks.mode='heads'.
  loss.class_weights = 'none'
  loss.class_weights_beta = 0.999

  # ------------------------------------------------------------- plateau ---
  # ReduceLROnPlateau: multiply the learning rate (on top of the schedule) by
  # `factor` after `patience` epochs whose validation metric does not beat the
  # best by `threshold` ('rel': times |best|; 'abs': plain), then ignore
  # `cooldown` epochs; never below `min_scale` times the schedule. Kept in the
  # checkpoints.
  config.plateau = plateau = ml_collections.ConfigDict()
  plateau.enabled = False
  # A validation metric ('accuracy', 'loss', 'top5_accuracy') and 'max' or
  # 'min'; empty: checkpoint.best_metric and checkpoint.best_mode.
  plateau.metric = ''
  plateau.mode = ''
  plateau.factor = 0.1
  plateau.patience = 10
  plateau.threshold = 1e-4
  plateau.threshold_mode = 'rel'
  plateau.cooldown = 0
  plateau.min_scale = 0.0

  # ------------------------------------------------------ early stopping ---
  # Stop after `patience` epochs (0: never) whose validation `metric` does not
  # beat the best by `min_delta`; the test still evaluates the best checkpoint
  # (by checkpoint.best_metric). Metric and mode as for the plateau.
  config.early_stopping = early_stopping = ml_collections.ConfigDict()
  early_stopping.patience = 0
  early_stopping.min_delta = 0.0
  early_stopping.metric = ''
  early_stopping.mode = ''

  # --------------------------------------------------------- checkpoints ---
  config.checkpoint = ckpt = ml_collections.ConfigDict()
  # Checkpoint after every epoch; keep the latest `keep` of them, and the best
  # one by `best_metric` (a validation metric) as well.
  ckpt.keep = 2
  ckpt.best_metric = 'accuracy'
  ckpt.best_mode = 'max'

  # ---------------------------------------------------------- evaluation ---
  # Read by `python -m jaxcls.cli.evaluate` and by the report every run writes to
  # WORKDIR/report/ (whose flags can override them for an existing run).
  config.evaluate = evaluate = ml_collections.ConfigDict()
  # Write WORKDIR/report/ when training ends (seconds to a minute: Grad-CAM
  # and the figures). Off, `python -m jaxcls.cli.evaluate --workdir DIR` writes
  # the same report later; sweeps of many short runs may skip it this way.
  evaluate.report_at_end = True
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

  # ------------------------------------------------------------ tracking ---
  # Where the metrics go (`jaxcls.training.tracking`), read on process 0 only.
  config.tracking = tracking = ml_collections.ConfigDict()
  # Any of 'tensorboard' (event files in WORKDIR), 'mlflow' and 'wandb', e.g.
  # ('tensorboard', 'mlflow'), on the command line also
  # `--config.tracking.backends=tensorboard,mlflow`; the console always shows
  # the metrics. MLflow and wandb are optional extras (pip install
  # 'jaxcls[mlflow]', 'jaxcls[wandb]').
  # Each tracked run gets the flat config as its parameters, the train metrics
  # every `train.log_every_steps`, the val metrics after each epoch and the
  # test metrics, all at the global step, and at the end results.json,
  # config.json and WORKDIR/report/ as files. Its id is kept in
  # WORKDIR/tracking.json, so a rerun of the workdir continues the same run.
  tracking.backends = ('tensorboard',)
  # The run's name in MLflow and wandb; empty: the workdir's folder name.
  tracking.run_name = ''
  # MLflow's tracking URI: 'sqlite:///PATH.db', a server ('http://HOST:5000')
  # or a file store ('file:PATH/mlruns'; MLflow 3 opens those only on request,
  # and naming one here is that request). None: $MLFLOW_TRACKING_URI, else
  # 'sqlite:///WORKDIR/../mlflow.db', one store for the runs of a folder,
  # with their files in WORKDIR/../mlartifacts/.
  tracking.mlflow_tracking_uri = config_dict.placeholder(str)
  # The MLflow experiment the run goes into (created when missing).
  tracking.mlflow_experiment = 'jaxcls'
  # wandb's project and entity (None: the account's default entity). Offline
  # (WANDB_MODE=offline) the run stays in WORKDIR/wandb/ (or $WANDB_DIR) for
  # a later `wandb sync`.
  tracking.wandb_project = 'jaxcls'
  tracking.wandb_entity = config_dict.placeholder(str)
  # The Optuna trial this run reports to, set by `jaxcls sweep --search ...` in
  # each trial's config (jaxcls.launch.optuna_search): after every epoch the
  # val metric `optuna_metric` goes to trial `optuna_trial` of study
  # `optuna_study` in `optuna_storage`, whose pruner may stop the run there.
  # None: no study.
  tracking.optuna_storage = config_dict.placeholder(str)
  tracking.optuna_study = 'jaxcls'
  tracking.optuna_trial = -1
  tracking.optuna_metric = 'val_accuracy'
  return config
