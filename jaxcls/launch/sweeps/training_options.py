"""The training options side by side, one trial each on the same data and schedule: SGD (the
default), gradient clipping by global norm and adaptive, gradient accumulation, LAMB, Lion,
RMSprop, Mixup in every epoch and Mixup switched off for the last two.

    jaxcls sweep --config default.py --sweep training_options --root runs/options \
        --set data.source=folder:PATH ...

The README's table: CIFAR-10 JPEGs (500 train, 100 test images per class), a CIFAR
ResNet-20 of width 16 at 32 px from scratch, 6 epochs (README "Training").
"""

EPOCHS = 6


def get_sweep():
  return dict(
      grid={'option': {
          'sgd': {},
          'clip_norm_1': {'optimizer.clip_grad_norm': 1.0},
          'adaptive_clip_0.01': {'optimizer.adaptive_clip': 0.01},
          # The batch of 128 as 4 micro-batches of 32, one update.
          'grad_accum_4': {'train.grad_accum_steps': 4},
          'lamb': {'optimizer.name': 'lamb', 'optimizer.learning_rate': 5e-3,
                   'optimizer.weight_decay': 0.02},
          # Lion: a rate 3-10x below AdamW's and a weight decay as much larger (its paper).
          'lion': {'optimizer.name': 'lion', 'optimizer.learning_rate': 3e-4,
                   'optimizer.weight_decay': 0.3},
          'rmsprop': {'optimizer.name': 'rmsprop', 'optimizer.learning_rate': 1e-3,
                      'optimizer.weight_decay': 1e-5},
          'mixup': {'mixup.mixup_alpha': 0.2},
          'mixup_off_epoch_4': {'mixup.mixup_alpha': 0.2, 'mixup.off_epoch': EPOCHS - 2},
      }},
      fixed={'model.name': 'cifar_resnet20', 'model.width': 16, 'data.image_size': 32,
             'train.num_epochs': EPOCHS, 'train.batch_size': 128,
             'evaluate.report_at_end': False})
