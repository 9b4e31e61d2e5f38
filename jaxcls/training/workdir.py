"""One workdir, one experiment: a rerun resumes only the run its config describes.

Rerunning the same command in the same workdir resumes; rerunning with a
changed learning rate would silently mix two experiments into one set of
checkpoints and one results.json. `check_config` compares the resolved config
with the one the workdir's run saved and refuses a difference unless asked
to allow it; fields that only change how a run is evaluated, logged or fed
(not what it computes) may always change.
"""

import json
from pathlib import Path

import ml_collections

from jaxcls.errors import ConfigError

CONFIG_FILE = 'config.json'
# May differ between the runs of one workdir: they do not change the trained model
# (model.conv_lowering changes how a convolution is computed, not which one; it is also absent
# from the workdirs of runs older than the field).
FREE_FIELDS = ('evaluate.', 'train.log_every_steps', 'data.num_workers', 'data.num_threads',
               'data.prefetch', 'data.data_dir', 'data.download', 'model.conv_lowering')
# Fields newer than some workdirs: compared only where the saved config has them, so a run
# saved before them still resumes (its data and model came from their old behaviour).
NEWER_FIELDS = ('data.interpolation', 'data.missing_test', 'model.head_zero_init',
                'model.padding', 'model.batch_norm_epsilon')


def _flatten(tree, prefix=''):
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else value
  return flat


def config_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """'field: saved -> now' for every field that differs, free fields left out."""
  now = _flatten(json.loads(config.to_json_best_effort()))
  before = _flatten(saved)
  return [f'{field}: {before.get(field, "(absent)")!r} -> {now.get(field, "(absent)")!r}'
          for field in sorted(set(now) | set(before))
          if not field.startswith(FREE_FIELDS) and before.get(field) != now.get(field)
          and not (field in NEWER_FIELDS and field not in before)]


def check_config(workdir: str | Path, config: ml_collections.ConfigDict, *,
                 has_checkpoints: bool, allow_change: bool = False) -> None:
  """Raises ConfigError when `workdir` holds a run of another config (see module doc)."""
  path = Path(workdir) / CONFIG_FILE
  if not has_checkpoints or not path.is_file():
    return
  differences = config_differences(json.loads(path.read_text()), config)
  if differences and not allow_change:
    raise ConfigError(
        f'{workdir} holds a run with another config ({len(differences)} field(s) differ):\n  '
        + '\n  '.join(differences[:20])
        + '\nTo resume that run, rerun its own command (its config is in '
        f'{path}); to start this one, use a new --workdir; to continue it with these changes '
        'anyway, pass --allow_config_change.')
