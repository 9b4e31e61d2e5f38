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

from jaxcls.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / 'configs' / 'default.py'

BEST_METRICS = ('accuracy', 'loss', 'top5_accuracy')
INTERPOLATIONS = ('bilinear', 'bicubic')


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
  from jaxcls.pretrained import store  # pylint: disable=g-import-not-at-top
  from jaxcls.pretrained.checkpoint_files import CheckpointFileError  # pylint: disable=g-import-not-at-top
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
  from jaxcls.models.registry import weights_arch_kwargs  # pylint: disable=g-import-not-at-top
  for field, value in weights_arch_kwargs(info.arch, weights).items():
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


def _finetune_errors(c) -> list[str]:
  """The fine-tuning plan against the model's own parameter groups (built abstractly)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from jaxcls.training import finetune  # pylint: disable=g-import-not-at-top
  from jaxcls.models import create_model  # pylint: disable=g-import-not-at-top
  kwargs = {'width': c.model.width} if c.model.width else {}
  model = nnx.eval_shape(lambda: create_model(c.model.name, 2, **kwargs))
  try:
    finetune.plan_from_config(c.finetune, finetune.group_names(model), c.train.num_epochs)
  except ConfigError as e:
    return [str(e)]
  return []


def _value_errors(c, device_count: int) -> list[str]:
  # Imported here: the schema check above must not depend on the registries.
  from jaxcls.data.splits import parse_split  # pylint: disable=g-import-not-at-top
  from jaxcls.models import list_models  # pylint: disable=g-import-not-at-top
  from jaxcls.models.conv import LOWERINGS  # pylint: disable=g-import-not-at-top

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
  check(c.data.missing_test in ('val', 'split'), 'data.missing_test', "expected 'val' or 'split'")
  check(c.data.num_folds == 0 or c.data.num_folds >= 2, 'data.num_folds',
        'must be 0 (off) or >= 2')
  check(0 <= c.data.fold < max(c.data.num_folds, 1), 'data.fold',
        f'must be in [0, data.num_folds={c.data.num_folds})' if c.data.num_folds else
        'must be 0 when data.num_folds is 0 (k-fold off)')
  check(c.data.image_size >= 0, 'data.image_size', 'must be positive (or 0: automatic)')
  check(not (c.data.on_device and c.data.augment.random_resized_crop), 'data.on_device',
        'cannot be combined with data.augment.random_resized_crop=True (it crops the source '
        'image at full resolution, which the on-device set no longer holds)')
  check(c.data.resize_size == 0 or c.data.resize_size >= c.data.image_size, 'data.resize_size',
        'must be 0 or at least data.image_size (resize, then center-crop)')
  check(len(c.data.mean) in (0, 3), 'data.mean', 'expected 3 channel means (or none: automatic)')
  check(len(c.data.std) in (0, 3) and all(s > 0 for s in c.data.std), 'data.std',
        'expected 3 positive channel stds (or none: automatic)')
  check(c.data.interpolation in INTERPOLATIONS, 'data.interpolation',
        f'expected one of {INTERPOLATIONS} (or empty: automatic)')
  _check_augment(c.data.augment, check)
  check(c.data.sampler in ('uniform', 'balanced'), 'data.sampler',
        "expected 'uniform' or 'balanced'")
  check(c.data.epoch_examples >= 0, 'data.epoch_examples',
        'must be >= 0 (0: the train split\'s size)')
  check(0 <= c.data.max_bad_fraction <= 1, 'data.max_bad_fraction', 'must be in [0, 1]')
  check(c.data.num_workers >= 0, 'data.num_workers', 'must be >= 0')
  check(c.data.num_threads >= 1, 'data.num_threads', 'must be >= 1')
  check(c.data.prefetch >= 1, 'data.prefetch', 'must be >= 1')

  check(c.model.name in list_models(), 'model.name', f'known models: {", ".join(list_models())}')
  check(c.model.width >= 0, 'model.width', 'must be >= 0 (0: the architecture\'s own)')
  check(c.model.dtype in ('float32', 'bfloat16'), 'model.dtype', "expected 'float32' or 'bfloat16'")
  check(c.model.head in ('linear', 'mlp'), 'model.head', "expected 'linear' or 'mlp'")
  check(c.model.conv_lowering in LOWERINGS, 'model.conv_lowering', f'expected one of {LOWERINGS}')
  check(c.model.head_hidden >= 1, 'model.head_hidden', 'must be >= 1')
  check(c.model.padding in ('', 'same', 'symmetric'), 'model.padding',
        "expected 'same', 'symmetric' or empty (the weights')")
  check(c.model.batch_norm_epsilon >= 0, 'model.batch_norm_epsilon', 'must be >= 0 (0: automatic)')
  for field in ('padding', 'batch_norm_epsilon'):
    check(not c.model[field] or c.model.name.startswith('efficientnet'), f'model.{field}',
          f'only EfficientNets take it, not {c.model.name}')
  check(0 <= c.model.head_dropout < 1, 'model.head_dropout', 'must be in [0, 1)')
  if c.model.name in list_models() and c.model.width >= 0:  # Else the model cannot be built.
    errors += _finetune_errors(c)
  check(c.tasks.mode in ('combined', 'heads'), 'tasks.mode', "expected 'combined' or 'heads'")
  check(len(c.tasks.names) != 1, 'tasks.names', 'name two or more tasks, or none')
  check(len(set(c.tasks.names)) == len(c.tasks.names), 'tasks.names', 'names must be distinct')
  check(not c.tasks.loss_weights or len(c.tasks.loss_weights) == len(c.tasks.names),
        'tasks.loss_weights', f'expected one weight per task in tasks.names={tuple(c.tasks.names)}')
  check(all(w >= 0 for w in c.tasks.loss_weights), 'tasks.loss_weights', 'must be >= 0')
  check(bool(c.tasks.separator), 'tasks.separator', 'must not be empty')

  check(c.optimizer.name in ('sgd', 'adamw'), 'optimizer.name', "expected 'sgd' or 'adamw'")
  check(c.optimizer.learning_rate > 0, 'optimizer.learning_rate', 'must be positive')
  check(0 <= c.optimizer.momentum < 1, 'optimizer.momentum', 'must be in [0, 1)')
  check(c.optimizer.weight_decay >= 0, 'optimizer.weight_decay', 'must be >= 0')
  check(c.optimizer.schedule in ('cosine', 'step', 'constant'), 'optimizer.schedule',
        "expected 'cosine', 'step' or 'constant'")
  check(c.optimizer.warmup_epochs >= 0, 'optimizer.warmup_epochs', 'must be >= 0')
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
  check(c.train.nonfinite in ('stop', 'skip'), 'train.nonfinite', "expected 'stop' or 'skip'")

  _check_regularization(c, check)

  check(c.evaluate.tta_crops in (1, 5), 'evaluate.tta_crops', 'expected 1 or 5')
  check(c.evaluate.top_k_checkpoints >= 1, 'evaluate.top_k_checkpoints', 'must be >= 1')
  check(c.checkpoint.keep >= 1, 'checkpoint.keep', 'must be >= 1')
  check(c.checkpoint.best_metric in BEST_METRICS, 'checkpoint.best_metric',
        f'expected one of {BEST_METRICS}')
  check(c.checkpoint.best_mode in ('max', 'min'), 'checkpoint.best_mode', "expected 'max' or 'min'")
  return errors


def _check_augment(a, check) -> None:
  """Value checks of `config.data.augment`; `check` records the failures."""
  def interval(field, low=0.0, high=float('inf'), low_open=True):
    value = tuple(a[field])
    ok = (len(value) == 2 and value[0] <= value[1] and
          (value[0] > low if low_open else value[0] >= low) and value[1] <= high)
    bounds = f'{"(" if low_open else "["}{low:g}, {high:g}]'
    check(ok, f'data.augment.{field}', f'expected (low, high) with low <= high, both in {bounds}')

  def probability(field):
    check(0 <= a[field] <= 1, f'data.augment.{field}', 'must be a probability in [0, 1]')

  check(a.random_crop_padding >= 0, 'data.augment.random_crop_padding', 'must be >= 0')
  interval('random_resized_crop_scale', high=1.0)
  interval('random_resized_crop_ratio')
  check(0 <= a.affine_degrees <= 180, 'data.augment.affine_degrees', 'must be in [0, 180]')
  check(0 <= a.affine_translate <= 1, 'data.augment.affine_translate',
        'must be in [0, 1] (a fraction of the side)')
  interval('affine_scale')
  check(0 <= a.affine_shear < 90, 'data.augment.affine_shear', 'must be in [0, 90) degrees')
  for field in ('brightness', 'contrast', 'saturation', 'noise_std'):
    check(a[field] >= 0, f'data.augment.{field}', 'must be >= 0 (0: off)')
  check(0 <= a.hue <= 0.5, 'data.augment.hue', 'must be in [0, 0.5] (a fraction of a turn)')
  for field in ('grayscale_prob', 'blur_prob', 'erasing_prob'):
    probability(field)
  interval('blur_sigma')
  check(a.blur_kernel_size >= 3 and a.blur_kernel_size % 2 == 1, 'data.augment.blur_kernel_size',
        'must be odd and >= 3')
  interval('erasing_scale', high=1.0)
  interval('erasing_ratio')
  check(a.erasing_value <= 1, 'data.augment.erasing_value',
        'must be <= 1 (a fill in [0, 1], or negative: random noise)')
  check(a.policy in ('', 'randaugment', 'trivialaugment'), 'data.augment.policy',
        "expected '', 'randaugment' or 'trivialaugment'")
  check(a.policy_num_ops >= 1, 'data.augment.policy_num_ops', 'must be >= 1')
  check(0 <= a.policy_magnitude <= 30, 'data.augment.policy_magnitude', 'must be in [0, 30]')


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


def _check_regularization(c, check) -> None:
  """Value checks of `config.mixup`, `loss`, `plateau` and `early_stopping`."""
  from jaxcls.training import losses  # pylint: disable=g-import-not-at-top
  m = c.mixup
  for field in ('mixup_alpha', 'cutmix_alpha'):
    check(m[field] >= 0, f'mixup.{field}', 'must be >= 0 (0: off)')
  for field in ('prob', 'switch_prob'):
    check(0 <= m[field] <= 1, f'mixup.{field}', 'must be a probability in [0, 1]')
  check(m.mode in ('batch', 'elem'), 'mixup.mode', "expected 'batch' or 'elem'")

  loss = c.loss
  check(loss.name in losses.LOSSES, 'loss.name', f'expected one of {losses.LOSSES}')
  check(loss.focal_gamma >= 0, 'loss.focal_gamma', 'must be >= 0')
  check(all(a >= 0 for a in loss.focal_alpha), 'loss.focal_alpha', 'must be >= 0')
  check(loss.class_weights in ('none', *losses.CLASS_WEIGHTINGS), 'loss.class_weights',
        f"expected 'none' or one of {losses.CLASS_WEIGHTINGS}")
  check(0 <= loss.class_weights_beta < 1, 'loss.class_weights_beta', 'must be in [0, 1)')
  heads = bool(c.tasks.names) and c.tasks.mode == 'heads'
  check(not heads or loss.class_weights == 'none', 'loss.class_weights',
        "weights the combined classes, which tasks.mode='heads' does not train on")
  check(not heads or len(loss.focal_alpha) <= 1, 'loss.focal_alpha',
        "one alpha per combined class does not fit tasks.mode='heads': give one value or none")

  metric_error = f'expected a validation metric {BEST_METRICS} or empty (checkpoint.best_metric)'
  mode_error = "expected 'max', 'min' or empty (checkpoint.best_mode)"
  p = c.plateau
  check(p.metric in ('', *BEST_METRICS), 'plateau.metric', metric_error)
  check(p.mode in ('', 'max', 'min'), 'plateau.mode', mode_error)
  check(0 < p.factor < 1, 'plateau.factor', 'must be in (0, 1)')
  check(p.patience >= 1, 'plateau.patience', 'must be >= 1')
  check(p.threshold >= 0, 'plateau.threshold', 'must be >= 0')
  check(p.threshold_mode in ('rel', 'abs'), 'plateau.threshold_mode', "expected 'rel' or 'abs'")
  check(p.cooldown >= 0, 'plateau.cooldown', 'must be >= 0')
  check(0 <= p.min_scale <= 1, 'plateau.min_scale', 'must be in [0, 1]')
  e = c.early_stopping
  check(e.patience >= 0, 'early_stopping.patience', 'must be >= 0 (0: off)')
  check(e.min_delta >= 0, 'early_stopping.min_delta', 'must be >= 0')
  check(e.metric in ('', *BEST_METRICS), 'early_stopping.metric', metric_error)
  check(e.mode in ('', 'max', 'min'), 'early_stopping.mode', mode_error)
