"""The one interface every model of the zoo implements, written down once.

Everything outside `jaxcls/models` that needs to know a model's structure
(fine-tuning groups, head replacement, Grad-CAM, checkpoint conversion,
auxiliary losses) reads it through this interface and nothing else, so a new
family is one module here that subclasses `Classifier` and registers itself;
no other file changes. `register` (`jaxcls.models.registry`) refuses a
constructor whose class does not implement it, and `create_model` checks the
built instance (`check_model`).

What a family provides:

  features(x)        normalised images [B, H, W, 3] -> pooled features
                     [B, num_features]: what a classifier head consumes. A
                     method, or a submodule named `features` that computes it
                     (so torchvision's `features.N` keys stay as they are).
  num_features       the width of `features(x)` (an instance attribute).
  head_name          the dotted module path of the classifier ('fc',
                     'classifier.1', 'head'): `replace_head` swaps it, the
                     converter leaves it fresh for a new number of classes.
  group_patterns     parameter groups from input to output, as (name, regex
                     over module paths) pairs ending with 'head'; fine-tuning
                     strategies freeze and unfreeze by them.
  last_stage(x)      -> (activations [B, h, w, C] of the last spatial stage,
                     a function of them giving `features(x)`): where Grad-CAM
                     takes its gradient.

and may override:

  classify(features) features -> logits; default: the module at `head_name`.
  checkpoint_layouts {layout name: renames that layout's key to ours, or None
                     to drop it}; the canonical (our own) key names are
                     always read, under the name 'torchvision' unless a layout
                     of that name is given.
  class_layers       dotted paths of every layer sized by the number of
                     classes (default: the head's); left fresh when the
                     classes change.
  tied_groups        {group: the group it trains with}: a group that trains
                     exactly when another does (GoogLeNet's auxiliary heads
                     with the stage they read), unless a schedule names it.
  logits_and_aux(x)  -> (logits, auxiliary logits tuple) in train mode; the
                     train loss adds `model.aux_weight` x each auxiliary
                     loss. Default: no auxiliary heads.
  adapt_checkpoint_tensor(key, value, target_shape)
                     a checkpoint tensor (PyTorch layout) resized to fit the
                     model where the model knows how (ViT's position
                     embeddings at another input size); default as is.
"""

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

GroupPatterns = tuple[tuple[str, str], ...]  # (group, regex over module paths), input first.
StageSplit = tuple[jax.Array, Callable[[jax.Array], jax.Array]]
HEAD = 'head'
# What a family's class must define itself (the rest have defaults here). `features` may
# instead be a submodule of that name whose call is the method (torchvision's `features`
# Sequential keeps its keys that way): `check_model` checks it on the instance.
REQUIRED = ('last_stage', 'group_patterns', 'head_name')


def get_submodule(model: nnx.Module, dotted_path: str) -> nnx.Module:
  """The module at 'classifier.1' (an index into a Sequential/List) or 'fc'."""
  module = model
  for part in dotted_path.split('.'):
    if part.isdigit():
      module = module.layers[int(part)] if hasattr(module, 'layers') else module[int(part)]
    else:
      module = getattr(module, part)
  return module


class Classifier(nnx.Module):
  """Base of every model in the zoo: `model(x) = classify(features(x))`. See the module doc."""

  head_name: str
  num_features: int
  aux_weight: float = 0.0  # Of each auxiliary loss (`logits_and_aux`); no auxiliary heads here.

  @property
  def group_patterns(self) -> GroupPatterns:
    raise NotImplementedError

  def features(self, x: jax.Array) -> jax.Array:
    raise NotImplementedError

  def last_stage(self, x: jax.Array) -> StageSplit:
    raise NotImplementedError

  def classify(self, features: jax.Array) -> jax.Array:
    return get_submodule(self, self.head_name)(features)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.classify(self.features(x))

  def logits_and_aux(self, x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    return self(x), ()

  @property
  def checkpoint_layouts(self) -> Mapping[str, Callable[[str], str | None]]:
    return {}

  @property
  def class_layers(self) -> tuple[str, ...]:
    return (self.head_name,)

  @property
  def tied_groups(self) -> Mapping[str, str]:
    return {}

  def adapt_checkpoint_tensor(self, key: str, value: np.ndarray,
                              target_shape: tuple[int, ...]) -> np.ndarray:
    del key, target_shape
    return value


def model_class(constructor) -> type:
  """The class a registered constructor (a class or a functools.partial of one) builds."""
  while hasattr(constructor, 'func'):
    constructor = constructor.func
  return constructor


def interface_errors(cls: type) -> list[str]:
  """What a model class lacks of the interface (empty when it implements it)."""
  if not (isinstance(cls, type) and issubclass(cls, Classifier)):
    return [f'{getattr(cls, "__name__", cls)} is not a jaxcls.models.interface.Classifier']
  return [f'{cls.__name__} does not define {name}' for name in REQUIRED
          if getattr(cls, name, None) is getattr(Classifier, name, None)]


def check_model(model: Classifier) -> None:
  """Raises TypeError naming what a built model gets wrong about the interface."""
  name = type(model).__name__
  problems = interface_errors(type(model))
  if getattr(model.features, '__func__', None) is Classifier.features:
    problems.append(f'{name} does not define features')
  if not problems:
    groups = [group for group, _ in model.group_patterns]
    if not groups or groups[-1] != HEAD:
      problems.append(f'{name}.group_patterns must end with the {HEAD!r} group, got {groups}')
    for group, anchor in model.tied_groups.items():
      if group not in groups or anchor not in groups:
        problems.append(f'{name}.tied_groups {group!r}: {anchor!r} names unknown groups')
    for path in model.class_layers:
      try:
        get_submodule(model, path)
      except (AttributeError, IndexError) as e:
        problems.append(f'{name}: no module at {path!r} ({e})')
    if not isinstance(getattr(model, 'num_features', None), int):
      problems.append(f'{name}.num_features must be an int')
  if problems:
    raise TypeError('; '.join(problems))


def mean_pool(activations: jax.Array) -> jax.Array:
  """Global average pool [B, h, w, C] -> [B, C], the pooling most families end with."""
  return jnp.mean(activations, axis=(1, 2))
