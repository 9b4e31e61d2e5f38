"""A 2x2 grid: learning rate x model width.

    python launch/sweep.py --config configs/default.py --sweep launch/sweeps/lr_width.py \
        --root runs/lr_width --parallel 2
"""


def get_sweep():
  return dict(grid={'optimizer.learning_rate': [0.05, 0.1], 'model.width': [4, 8]})
