"""Name -> constructor registry, so configs pick architectures by name (as timm does)."""

from collections.abc import Callable

from flax import nnx

_MODELS: dict[str, Callable[..., nnx.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nnx.Module]], Callable[..., nnx.Module]]:
  """Decorator: makes `create_model(name, ...)` call the decorated constructor."""

  def add(constructor):
    if name in _MODELS:
      raise ValueError(f'model {name!r} is registered twice')
    _MODELS[name] = constructor
    return constructor

  return add


def list_models() -> list[str]:
  return sorted(_MODELS)


def create_model(name: str, num_classes: int, *, seed: int = 0, **kwargs) -> nnx.Module:
  """Builds a registered model with freshly initialised parameters.

  Args:
    name: a name from `list_models()`, e.g. 'resnet50' or 'cifar_resnet20'.
    num_classes: outputs of the classifier head.
    seed: seed of the parameter initialisation.
    **kwargs: passed to the constructor (e.g. `width`, `dtype`).
  """
  if name not in _MODELS:
    raise ValueError(f'unknown model {name!r}; known models: {", ".join(list_models())}')
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes}')
  return _MODELS[name](num_classes=num_classes, rngs=nnx.Rngs(params=seed), **kwargs)
