"""Stratified k-fold cross-validation: one trial per fold (default 5), summarised as mean +- std.

    jaxcls sweep --config default.py --sweep kfold:5 \
        --root runs/kfold
    jaxcls summarize runs/kfold      # the k-fold table: mean +- std over the folds

Combine with other axes by adding them to `grid` (or `random`): every
configuration then runs on every fold.
"""


def get_sweep(num_folds: str = '5'):
  num_folds = int(num_folds)
  return dict(grid={'data.fold': list(range(num_folds))}, fixed={'data.num_folds': num_folds})
