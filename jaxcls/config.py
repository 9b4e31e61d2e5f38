"""Loading and validating configs before anything compiles.

`configs/default.py` is the schema: a config may only hold the keys it
defines, with values of the same types. On top of that, `validate` checks the
values against each other and against the devices, and reports every problem
at once, each naming the field and the value.
"""

import importlib.util
from pathlib import Path

import ml_collections

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / 'configs' / 'default.py'

BEST_METRICS = ('accuracy', 'loss', 'top5_accuracy')


class ConfigError(ValueError):
  """A config with unknown keys, wrong types or impossible values."""


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
  """Runs `get_config()` of a config file, as `--config PATH` does."""
  path = Path(path)
  if not path.is_file():
    raise ConfigError(f'config file {str(path)!r} does not exist')
  spec = importlib.util.spec_from_file_location(f'_jaxcls_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def default_config() -> ml_collections.ConfigDict:
  return load_config_file(DEFAULT_CONFIG)


def resolve_automatic_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy with the automatic (empty or 0) input fields filled in.

  With pretrained weights, the input size, resize and normalisation default to
  what the weights were trained with (a converted checkpoint's metadata, or
  ImageNet's conventions for a raw PyTorch file); without, to 32x32 and a
  mean of 0.5 and std of 0.25 per channel. Fields the config sets win.
  """
  from jaxcls.pretrained import store  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(config.to_dict())  # Unlocked copy; the input stays as given.
  info = None
  if config.model.pretrained:
    info = store.read_metadata(config.model.pretrained) or store.PretrainedInfo(
        arch=config.model.name, source=config.model.pretrained, sha256='', layout='', num_classes=0)
  data = config.data
  if not data.image_size:
    data.image_size = info.input_size if info else 32
    if info and not data.resize_size:
      data.resize_size = int(round(info.input_size / info.crop_pct))
  if not data.mean:
    data.mean = tuple(info.mean) if info else (0.5, 0.5, 0.5)
  if not data.std:
    data.std = tuple(info.std) if info else (0.25, 0.25, 0.25)
  return config


def validate(config: ml_collections.ConfigDict, *, device_count: int = 1,
             defaults: ml_collections.ConfigDict | None = None) -> None:
  """Raises ConfigError listing every unknown key, wrong type and impossible value."""
  defaults = default_config() if defaults is None else defaults
  errors = _schema_errors(config, defaults, 'config')
  if not errors:  # Value checks assume the schema holds.
    errors = _value_errors(config, device_count)
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


def _value_errors(c, device_count: int) -> list[str]:
  # Imported here: the schema check above must not depend on the registries.
  from jaxcls.data.splits import parse_split  # pylint: disable=g-import-not-at-top
  from jaxcls.models import list_models  # pylint: disable=g-import-not-at-top

  errors = []

  def check(ok, field, message):
    if not ok:
      value = c
      for part in field.split('.'):
        value = value[part]
      errors.append(f'config.{field}={value!r}: {message}')

  source = c.data.source
  check(source == 'digits' or (source.startswith(('tfds:', 'folder:')) and
                               len(source.split(':', 1)[1]) > 0),
        'data.source', "expected 'digits', 'tfds:NAME' or 'folder:PATH'")
  try:
    kind, split = parse_split(tuple(c.data.split))
    check(split[0] > 0, 'data.split', f'the train {kind[:-1]} must be positive')
  except ValueError as e:
    check(False, 'data.split', str(e))
  check(c.data.image_size >= 0, 'data.image_size', 'must be positive (or 0: automatic)')
  check(c.data.resize_size == 0 or c.data.resize_size >= c.data.image_size, 'data.resize_size',
        'must be 0 or at least data.image_size (resize, then center-crop)')
  check(len(c.data.mean) in (0, 3), 'data.mean', 'expected 3 channel means (or none: automatic)')
  check(len(c.data.std) in (0, 3) and all(s > 0 for s in c.data.std), 'data.std',
        'expected 3 positive channel stds (or none: automatic)')
  check(c.model.pretrained is None or Path(c.model.pretrained).exists(), 'model.pretrained',
        'no such file or directory')
  check(c.data.augment.random_crop_padding >= 0, 'data.augment.random_crop_padding',
        'must be >= 0')
  check(c.data.num_workers >= 0, 'data.num_workers', 'must be >= 0')
  check(c.data.num_threads >= 1, 'data.num_threads', 'must be >= 1')
  check(c.data.prefetch >= 1, 'data.prefetch', 'must be >= 1')

  check(c.model.name in list_models(), 'model.name', f'known models: {", ".join(list_models())}')
  check(c.model.width >= 0, 'model.width', 'must be >= 0 (0: the architecture\'s own)')
  check(c.model.dtype in ('float32', 'bfloat16'), 'model.dtype', "expected 'float32' or 'bfloat16'")

  check(c.optimizer.name in ('sgd', 'adamw'), 'optimizer.name', "expected 'sgd' or 'adamw'")
  check(c.optimizer.learning_rate > 0, 'optimizer.learning_rate', 'must be positive')
  check(0 <= c.optimizer.momentum < 1, 'optimizer.momentum', 'must be in [0, 1)')
  check(c.optimizer.weight_decay >= 0, 'optimizer.weight_decay', 'must be >= 0')
  check(c.optimizer.schedule in ('cosine', 'step', 'constant'), 'optimizer.schedule',
        "expected 'cosine', 'step' or 'constant'")
  check(0 <= c.optimizer.warmup_epochs < c.train.num_epochs, 'optimizer.warmup_epochs',
        f'must be in [0, train.num_epochs={c.train.num_epochs})')
  decay = list(c.optimizer.decay_epochs)
  check(decay == sorted(decay) and all(e > c.optimizer.warmup_epochs for e in decay),
        'optimizer.decay_epochs', 'must be increasing and after the warm-up')
  check(c.optimizer.decay_factor > 0, 'optimizer.decay_factor', 'must be positive')

  check(c.train.num_epochs >= 1, 'train.num_epochs', 'must be >= 1')
  for field in ('batch_size', 'eval_batch_size'):
    size = c.train[field]
    check(size >= (1 if field == 'batch_size' else 0), f'train.{field}', 'must be positive')
    check(size % device_count == 0, f'train.{field}',
          f'must be divisible by the device count ({device_count})')
  check(0 <= c.train.label_smoothing < 1, 'train.label_smoothing', 'must be in [0, 1)')
  check(c.train.log_every_steps >= 1, 'train.log_every_steps', 'must be >= 1')

  check(c.evaluate.tta_crops in (1, 5), 'evaluate.tta_crops', 'expected 1 or 5')
  check(c.evaluate.top_k_checkpoints >= 1, 'evaluate.top_k_checkpoints', 'must be >= 1')
  check(c.checkpoint.keep >= 1, 'checkpoint.keep', 'must be >= 1')
  check(c.checkpoint.best_metric in BEST_METRICS, 'checkpoint.best_metric',
        f'expected one of {BEST_METRICS}')
  check(c.checkpoint.best_mode in ('max', 'min'), 'checkpoint.best_mode', "expected 'max' or 'min'")
  return errors
