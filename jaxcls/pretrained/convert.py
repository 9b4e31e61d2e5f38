"""PyTorch state dict -> flax.nnx model state, strict by default.

Our modules are named after torchvision's, so each nnx variable has a
*canonical* PyTorch key derived from its path alone (`canonical_key`):

    ('layer1', 0, 'downsample', 'layers', 0, 'kernel') -> 'layer1.0.downsample.0.weight'

Checkpoints in another layout (timm's, efficientnet_pytorch's) are first
renamed to canonical keys by the model's `checkpoint_layouts[layout]`
function. Tensors are then transposed to Flax's conventions: convolution
kernels OIHW -> HWIO, linear weights (out, in) -> (in, out); anything else
(biases, norm scales, BatchNorm running statistics, layer scales stored as
[C, 1, 1]) is reshaped to the target shape when the sizes agree.

Nothing is silently left random: every target variable must be filled and
every source tensor used, or the error lists what was unmatched and which
shapes disagreed. Only the classifier head may be skipped (`keep_head=False`),
for a new number of classes.
"""

from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

# nnx leaf name -> PyTorch parameter/buffer name.
_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'mean': 'running_mean',
               'var': 'running_var'}
# What a checkpoint holds: parameters and BatchNorm statistics, not RNG state
# (dropout, stochastic depth), which every model initialises for itself.
WEIGHTS = nnx.Any(nnx.Param, nnx.BatchStat)
# Buffers PyTorch saves that have no Flax counterpart.
_IGNORED_SUFFIXES = ('num_batches_tracked',)


class CheckpointMismatchError(ValueError):
  """The checkpoint does not fit the model: names the unmatched keys and shapes."""


def canonical_key(path: tuple) -> str:
  """The torchvision-style key of the nnx variable at `path`."""
  parts = [str(p) for p in path if p != 'layers']  # nnx.Sequential's list is `layers`.
  parts[-1] = _LEAF_NAMES.get(parts[-1], parts[-1])
  return '.'.join(parts)


def to_flax(value: np.ndarray, target_shape: tuple[int, ...], key: str) -> np.ndarray:
  """Transposes/reshapes one PyTorch tensor to the Flax variable's layout."""
  value = source_value = np.asarray(value)
  if value.ndim == 4 and len(target_shape) == 4:
    value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO (depthwise: [C,1,h,w] -> [h,w,1,C]).
  elif value.ndim == 2 and len(target_shape) == 2:
    value = value.T  # Linear (out, in) -> (in, out).
  elif value.size == int(np.prod(target_shape)) and value.ndim != len(target_shape):
    value = value.reshape(target_shape)  # E.g. layer scale [C, 1, 1] -> [C].
  if tuple(value.shape) != tuple(target_shape):
    raise CheckpointMismatchError(
        f'{key}: checkpoint shape {source_value.shape} does not fit the model\'s '
        f'{tuple(target_shape)}')
  return value


def _as_is(value: np.ndarray, target_shape: tuple[int, ...], key: str) -> np.ndarray:
  """Tensors already in Flax's layout (checkpoints written by jaxcls.cli.convert)."""
  if tuple(np.shape(value)) != tuple(target_shape):
    raise CheckpointMismatchError(f'{key}: checkpoint shape {tuple(np.shape(value))} does not fit '
                                  f'the model\'s {tuple(target_shape)}')
  return np.asarray(value)


def _class_prefixes(model: nnx.Module) -> tuple[str, ...]:
  """Key prefixes of the layers sized by the number of classes (`Classifier.class_layers`)."""
  return tuple(f'{path}.' for path in model.class_layers)


def load_state_dict(model: nnx.Module, state_dict: Mapping[str, np.ndarray], *,
                    layout: str | None = None, keep_head: bool | None = None) -> str:
  """Copies `state_dict` into `model` in place; returns the layout it matched.

  Args:
    model: a jaxcls model (`jaxcls.models.interface.Classifier`): its
      `checkpoint_layouts` map layout names to functions renaming a source
      key to its canonical key (or None for keys to drop).
    state_dict: PyTorch key -> numpy array (see `jaxcls.pretrained.checkpoint_files`).
    layout: the checkpoint's layout; None tries the canonical one, then each of
      the model's, and takes the first that matches every key. 'jaxcls': keys
      canonical and tensors already in Flax's layout (a converted checkpoint).
    keep_head: False leaves the classifier head (`model.class_layers`: the
      head and any auxiliary classifier) as initialised and ignores the
      checkpoint's, e.g. for a new number of classes; None keeps them exactly
      when their shapes fit the model's.
  """
  name, plan = _match(model, state_dict, layout, keep_head)
  convert_tensor = _as_is if name == 'jaxcls' else to_flax
  shape_errors, converted = [], {}
  for canonical, (key, value, variable) in plan.items():
    try:
      # E.g. ViT's position embeddings resampled to the model's input size.
      value = model.adapt_checkpoint_tensor(canonical, value, tuple(variable.shape))
      converted[canonical] = convert_tensor(value, variable.shape, key)
    except CheckpointMismatchError as e:
      shape_errors.append(str(e))
  if shape_errors:
    raise CheckpointMismatchError(f'{len(shape_errors)} shape mismatches: {_preview(shape_errors)}')
  for canonical, value in converted.items():  # Only once everything fits: no half-loaded model.
    variable = plan[canonical][2]
    variable.set_value(jnp.asarray(value, dtype=variable.dtype))
  return name


def match_layout(model: nnx.Module, state_dict: Mapping[str, np.ndarray]) -> str:
  """The layout whose key names fit `model` (abstract is fine: no tensor is touched)."""
  return _match(model, state_dict, None, None)[0]


def _match(model, state_dict, layout, keep_head) -> tuple[str, dict]:
  """(the layout, {canonical key: (source key, tensor, target variable)}) that fits every key."""
  identity = lambda k: k  # noqa: E731
  if layout == 'jaxcls':  # Canonical keys, Flax layout: written by save_converted.
    return layout, _plan(model, state_dict, identity, keep_head)
  layouts: dict[str, Callable[[str], str | None]] = {'torchvision': identity}
  layouts.update(model.checkpoint_layouts)  # A model's own 'torchvision' replaces the identity.
  if layout is not None and layout not in layouts:
    raise ValueError(f'unknown checkpoint layout {layout!r}; this model reads {sorted(layouts)}')
  candidates = [layout] if layout else list(layouts)
  errors = {}
  for name in candidates:
    try:
      return name, _plan(model, state_dict, layouts[name], keep_head)
    except CheckpointMismatchError as e:
      errors[name] = e
  if len(errors) == 1:
    raise next(iter(errors.values()))
  raise CheckpointMismatchError(
      'the checkpoint matches none of the layouts this model reads:\n' +
      '\n'.join(f'--- as {name}: {e}' for name, e in errors.items()))


def _plan(model, state_dict, rename, keep_head) -> dict:
  heads = _class_prefixes(model)
  source = {}
  for key, value in state_dict.items():
    if key.endswith(_IGNORED_SUFFIXES):
      continue
    canonical = rename(key)
    if canonical is None:
      continue
    if canonical in source:
      raise CheckpointMismatchError(f'two checkpoint keys map to {canonical!r}')
    source[canonical] = (key, value)

  # nnx.state hands out the model's own Variables: set_value loads in place.
  variables = dict(nnx.to_flat_state(nnx.state(model, WEIGHTS)))
  targets = {canonical_key(path): variables[path] for path in variables}
  if keep_head is None:
    keep_head = all(k in source and np.size(source[k][1]) == np.prod(v.shape)
                    for k, v in targets.items() if k.startswith(heads))
  skipped = lambda k: not keep_head and k.startswith(heads)  # noqa: E731
  missing = [k for k in targets if k not in source and not skipped(k)]
  unused = [source[k][0] for k in source if k not in targets and not skipped(k)]
  if missing or unused:
    raise CheckpointMismatchError(
        f'{len(missing)} model variables have no checkpoint tensor: {_preview(missing)}; '
        f'{len(unused)} checkpoint tensors fit no model variable: {_preview(unused)}')
  return {k: (*source[k], v) for k, v in targets.items() if not skipped(k)}


def _preview(keys: list[str], limit: int = 12) -> str:
  if not keys:
    return '-'
  shown = ', '.join(keys[:limit])
  return shown + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')
