"""Fine-tuning strategies side by side on the embedded digits, from a real ImageNet network.

The backbone is the real ImageNet EfficientNet-Lite0 that installs offline
(configs/digits_efficientnet_lite0.py says where it comes from). Each row of
the comparison is one command; ROW is one of the keys of `ROWS`:

    for row in full partial feature_extraction mlp_probe gradual discriminative scratch; do
      python -m jaxcls.main --config configs/finetune_digits.py:$row --workdir runs/ft_digits/$row
    done

Lite0's groups: stem, stage1..stage7, conv_head, head.
"""

from pathlib import Path

from jaxcls.config import apply_overrides, load_config_file

ROWS = {
    'full': {},
    # The last two groups before the head (stage7, conv_head), and the head.
    'partial': {'finetune.strategy': 'partial', 'finetune.trainable_groups': 2},
    # A linear probe: the frozen backbone's pooled features -> a new Linear.
    'feature_extraction': {'finetune.strategy': 'feature_extraction',
                           'optimizer.learning_rate': 0.1},
    'mlp_probe': {'finetune.strategy': 'feature_extraction', 'model.head': 'mlp',
                  'model.head_hidden': 256, 'optimizer.learning_rate': 0.1},
    # The head first, then one more group from the output side every epoch.
    'gradual': {'finetune.strategy': 'gradual', 'finetune.unfreeze_every': 1},
    # Everything trains; each group 0.7 times as fast as the one after it.
    'discriminative': {'finetune.layer_decay': 0.7},
    'scratch': {},
}


def get_config(row: str = 'full'):
  if row not in ROWS:
    raise ValueError(f'configs/finetune_digits.py:ROW: unknown row {row!r}; rows: {", ".join(ROWS)}')
  lite0 = Path(__file__).with_name('digits_efficientnet_lite0.py')
  # Without the weights (or their package) for the scratch row.
  config = load_config_file(lite0, 'scratch' if row == 'scratch' else 'pretrained')
  config.train.num_epochs = 6
  return apply_overrides(config, ROWS[row])
