"""Loading and validating configs before anything compiles.

`configs/default.py` is the schema: a config may only hold the keys it
defines, with values of the same types. On top of that, `validate` checks the
values against each other and against the devices, and reports every problem
at once, each naming the field and the value.
"""

import importlib.util
from pathlib import Path

import ml_collections
from absl import logging

from jaxcls.data import device_augment, label_tasks, mixing, pipeline
from jaxcls.errors import ConfigError, ConfigProblems
from jaxcls.models import registry
from jaxcls.pretrained import store
from jaxcls.pretrained.checkpoint_files import CheckpointFileError
from jaxcls.training import (checkpointing, feature_cache, finetune, loop, losses, optim, plateau,
                             tracking)

DEFAULT_CONFIG = Path(__file__).resolve().parent / 'configs' / 'default.py'  # In the package.


def load_config_file(path: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
  """Runs `get_config()` of a config file, as `--config PATH` does (`get_config(arg)`: PATH:ARG)."""
  path = Path(path)
  if not path.is_file():
    raise ConfigError(f'config file {str(path)!r} does not exist')
  spec = importlib.util.spec_from_file_location(f'_jaxcls_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


def default_config() -> ml_collections.ConfigDict:
  return load_config_file(DEFAULT_CONFIG)


def resolve_automatic_fields(config: ml_collections.ConfigDict, *,
                             log: bool = False) -> ml_collections.ConfigDict:
  """A copy with the automatic (empty or 0) fields filled in, from the pretrained weights.

  With pretrained weights (a tag, a Hub repo, a converted directory or a raw
  file: `jaxcls.pretrained.store.resolve`), the architecture, input size,
  resize, interpolation and normalisation default to what the weights were
  trained with; without, to 32x32 bilinear and a mean of 0.5 and std of 0.25
  per channel. Fields the config sets win (`log` says where they differ).
  A warm-up as long as the run or longer becomes a fifth of it, so a one-epoch
  run works with the default warm-up. `log`: say what was chosen.
  """
  config = ml_collections.ConfigDict(config.to_dict())  # Unlocked copy; the input stays as given.
  notes = []
  info = _pretrained_info(config, notes) if config.model.pretrained else None
  data = config.data
  wanted = {} if info is None else dict(
      image_size=info.input_size, resize_size=info.resize_size, mean=tuple(info.mean),
      std=tuple(info.std), interpolation=info.interpolation)
  if not data.image_size:
    data.image_size = wanted.get('image_size', 32)
    if info and not data.resize_size:
      data.resize_size = wanted['resize_size']
  if not data.interpolation:
    data.interpolation = wanted.get('interpolation', 'bilinear')
  if not data.mean:
    data.mean = wanted.get('mean', (0.5, 0.5, 0.5))
  if not data.std:
    data.std = wanted.get('std', (0.25, 0.25, 0.25))
  for field, value in wanted.items():
    if tuple(_rounded(data[field])) != tuple(_rounded(value)):
      notes.append(f'config.data.{field}={data[field]!r} as set; the weights were trained with '
                   f'{value!r}')
  o = config.optimizer
  if o.warmup_epochs >= config.train.num_epochs > 0:
    warmup = config.train.num_epochs / 5
    notes.append(f'config.optimizer.warmup_epochs={o.warmup_epochs:g} is not shorter than '
                 f'train.num_epochs={config.train.num_epochs}: warming up over {warmup:g} epochs')
    o.warmup_epochs = warmup
  if log:
    for note in notes:
      logging.info('%s', note)
  return config


def _rounded(value, digits: int = 6):
  """Values as a tuple rounded for comparing (127/255 read back from JSON is the same mean)."""
  values = value if isinstance(value, (tuple, list)) else (value,)
  return tuple(round(v, digits) if isinstance(v, float) else v for v in values)


def _pretrained_info(config, notes: list[str]):
  """The weights `config.model.pretrained` names; model.name and width follow them."""
  spec, model = str(config.model.pretrained), config.model
  defaults = default_config().model
  try:
    weights = store.resolve(spec, None if store.names_architecture(spec) else model.name)
  except (KeyError, FileNotFoundError, ValueError, CheckpointFileError,
          store.PretrainedSourceError) as e:
    message = e.args[0] if isinstance(e, KeyError) else str(e)
    raise ConfigError(f'config.model.pretrained={spec!r}: {message}') from e
  info = weights.info
  if model.name != info.arch:
    if model.name != defaults.name:
      raise ConfigError(f'config.model.name={model.name!r}: config.model.pretrained={spec!r} '
                        f'holds {info.arch} weights (leave model.name unset, or set it to '
                        f'{info.arch!r})')
    notes.append(f'config.model.name={info.arch!r}: from the weights {spec}')
    model.name = info.arch
    if model.width == defaults.width:  # The default's narrow width is for its own model.
      model.width = 0
  for field, value in registry.weights_arch_kwargs(info.arch, weights).items():
    if not model.get(field):
      model[field] = value
    elif model[field] != value:
      notes.append(f'config.model.{field}={model[field]!r} as set; the weights need {value!r}')
  notes.append(f'pretrained {info.tag or info.source}: {info.arch}, input {info.input_size} '
               f'(resize {info.resize_size}, {info.interpolation}), mean {_rounded(info.mean, 4)},'
               f' std {_rounded(info.std, 4)}')
  return info


def validate(config: ml_collections.ConfigDict, *, device_count: int = 1,
             defaults: ml_collections.ConfigDict | None = None) -> None:
  """Raises ConfigError listing every unknown key, wrong type and impossible value."""
  defaults = default_config() if defaults is None else defaults
  errors = _schema_errors(config, defaults, 'config')
  if not errors:  # Value checks assume the schema holds, and see the automatic fields filled.
    try:
      config = resolve_automatic_fields(config)
    except ConfigError as e:
      errors = [str(e)]
    else:
      errors = value_errors(config, device_count)
  if errors:
    raise ConfigError('invalid config:\n  ' + '\n  '.join(errors))


def _schema_errors(config, defaults, prefix) -> list[str]:
  errors = []
  for key in config.keys():
    name = f'{prefix}.{key}'
    value = config[key]
    if key not in defaults:
      errors.append(f'{name}: unknown field (known: {", ".join(sorted(defaults.keys()))})')
      continue
    expected = defaults.get_type(key) if isinstance(defaults, ml_collections.ConfigDict) else type(
        defaults[key])
    if isinstance(defaults[key], (dict, ml_collections.ConfigDict)):
      if not isinstance(value, (dict, ml_collections.ConfigDict)):
        errors.append(f'{name}={value!r}: expected a group of fields')
      else:
        errors += _schema_errors(value, defaults[key], name)
    elif value is not None and not _type_ok(value, expected):
      errors.append(f'{name}={value!r}: expected {expected.__name__}, got {type(value).__name__}')
  return errors


def _type_ok(value, expected) -> bool:
  if expected in (tuple, list):
    return isinstance(value, (tuple, list))
  if expected is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if expected is int:
    return isinstance(value, int) and not isinstance(value, bool)
  return isinstance(value, expected)


def value_errors(c: ml_collections.ConfigDict, device_count: int = 1) -> list[str]:
  """Every impossible value of a schema-valid config with its automatic fields filled in.

  Each group's rules live beside the code that consumes the group.
  """
  return [
      *pipeline.config_errors(c.data), *device_augment.config_errors(c.data.augment),
      *registry.config_errors(c.model),
      *finetune.config_errors(c.finetune, c.model, c.train.num_epochs),
      *feature_cache.config_errors(c.finetune),
      *label_tasks.config_errors(c.tasks), *optim.config_errors(c.optimizer),
      *loop.config_errors(c.train, device_count), *mixing.config_errors(c.mixup),
      *losses.config_errors(c.loss, c.tasks), *plateau.config_errors(c.plateau),
      *plateau.early_stopping_config_errors(c.early_stopping),
      *_evaluate_errors(c.evaluate), *checkpointing.config_errors(c.checkpoint),
      *tracking.config_errors(c.tracking), *_aux_errors(c),
  ]


def _aux_errors(c) -> list[str]:
  """Auxiliary classifiers predict the combined classes: one head per task has no use for them."""
  p = ConfigProblems('model', c.model)
  p.check(not (c.model.aux_logits and c.tasks.names and c.tasks.mode == 'heads'), 'aux_logits',
          "auxiliary classifiers need one head over the classes, not tasks.mode='heads'")
  return p


def _evaluate_errors(evaluate_config) -> list[str]:
  """`config.evaluate`'s checks: its consumer, `jaxcls.evaluation`, is above this module."""
  p = ConfigProblems('evaluate', evaluate_config)
  p.check(evaluate_config.tta_crops in (1, 5), 'tta_crops', 'expected 1 or 5')
  p.check(evaluate_config.top_k_checkpoints >= 1, 'top_k_checkpoints', 'must be >= 1')
  return p


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Sets dotted fields, {'finetune.strategy': 'partial', ...}, as `--config.x.y=v` would."""
  for field, value in overrides.items():
    *groups, name = field.split('.')
    target = config
    for group in groups:
      target = target[group]
    if name not in target:
      raise ConfigError(f'config.{field}: unknown field')
    target[name] = value
  return config
