"""Grid search: learning rate x batch size x MLP head units (12 trials), AdamW.

    jaxcls sweep --config default.py --sweep hparam_grid \
        --root runs/hparam_grid
"""


def get_sweep():
  return dict(
      grid={'optimizer.learning_rate': [1e-3, 5e-4], 'train.batch_size': [64, 128],
            'model.head_hidden': [128, 256, 512]},
      fixed={'optimizer.name': 'adamw', 'optimizer.weight_decay': 0.05, 'model.head': 'mlp'})
