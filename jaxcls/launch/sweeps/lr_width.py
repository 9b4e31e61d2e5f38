"""A 2x2 grid: learning rate x model width.

    jaxcls sweep --config default.py --sweep lr_width \
        --root runs/lr_width --parallel 2
"""


def get_sweep():
  return dict(grid={'optimizer.learning_rate': [0.05, 0.1], 'model.width': [4, 8]})
