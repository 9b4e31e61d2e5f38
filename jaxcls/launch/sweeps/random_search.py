"""Random search: log-uniform learning rate and weight decay, a few discrete choices.

    jaxcls sweep --config default.py --sweep random_search \
        --root runs/random_search          # --sweep random_search:16 for 16 trials
"""


def get_sweep(num_trials: str = '8'):
  return dict(
      random={'optimizer.learning_rate': ('log_uniform', 1e-3, 0.3),
              'optimizer.weight_decay': ('log_uniform', 1e-5, 1e-2),
              'train.label_smoothing': ('uniform', 0.0, 0.2),
              'model.width': ('int', 4, 16),
              'optimizer.name': ('choice', ['sgd', 'adamw'])},
      num_trials=int(num_trials), seed=0)
