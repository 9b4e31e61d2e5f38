"""Name -> constructor registry, so configs pick architectures by name (as timm does)."""

from collections.abc import Callable

from flax import nnx

from jaxcls.models.conv import set_conv_lowering

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


def create_model(name: str, num_classes: int = 1000, *, seed: int = 0,
                 pretrained: str | None = None, conv_lowering: str = 'auto',
                 **kwargs) -> nnx.Module:
  """Builds a registered model, freshly initialised or from pretrained weights.

  Args:
    name: a name from `list_models()`, e.g. 'resnet50' or 'cifar_resnet20'.
    num_classes: outputs of the classifier head.
    seed: seed of the parameter initialisation (of the head, when pretrained).
    pretrained: a directory written by `python -m jaxcls.convert`, or a PyTorch
      `.pth`/`.safetensors` file converted on the fly. Every variable comes from
      it except a head whose number of classes differs, which stays fresh.
    conv_lowering: 'auto' (on CPU, the convolutions XLA:CPU is slow at run as
      patch matmuls or shifted sums; XLA's elsewhere: `jaxcls.models.conv`) or
      'xla' (always XLA's convolution).
    **kwargs: passed to the constructor (e.g. `width`, `dtype`).

  After `model.eval()`, `model(images)` maps a float32 NHWC batch, already
  normalised, to logits.
  """
  if name not in _MODELS:
    raise ValueError(f'unknown model {name!r}; known models: {", ".join(list_models())}')
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes}')
  model = _MODELS[name](num_classes=num_classes, rngs=nnx.Rngs(seed), **kwargs)
  if pretrained:
    from jaxcls.pretrained.store import load_pretrained  # pylint: disable=g-import-not-at-top
    load_pretrained(model, pretrained, arch=name)
  return set_conv_lowering(model, conv_lowering)


def model_from_config(model_config, class_names, tasks=None, *, seed: int = 0,
                      pretrained: bool = True) -> nnx.Module:
  """The model `config.model` describes, for these classes, with its configured head.

  Args:
    model_config: `config.model`.
    class_names: the data set's classes (their count sizes the head).
    tasks: `jaxcls.tasks.Tasks` with `config.tasks.mode == 'heads'`: one head
      per task (a `MultiTaskHead`); None: one head over the classes.
    seed: initialisation seed.
    pretrained: load `model_config.pretrained` (off to build a skeleton that
      a checkpoint restore fills anyway).

  Pretrained weights load into the architecture's own head first (kept when
  the classes match), then a configured MLP or multi-task head replaces it.
  """
  from jaxcls.models import heads  # pylint: disable=g-import-not-at-top
  # A run's saved config.json from before model.conv_lowering existed has no such field.
  kwargs = dict(dtype=model_config.dtype,
                conv_lowering=model_config.get('conv_lowering', 'auto'))
  if model_config.width:
    kwargs['width'] = model_config.width
  model = create_model(model_config.name, len(class_names), seed=seed,
                       pretrained=model_config.pretrained if pretrained else None, **kwargs)
  # A separate stream, so the backbone's initialisation does not depend on the head.
  rngs = nnx.Rngs(params=seed + 1, dropout=seed + 2)
  in_features = heads.head_in_features(model)
  if tasks is not None:
    heads.replace_head(model, heads.MultiTaskHead(
        in_features, list(zip(tasks.names, tasks.sizes)), tasks.class_tasks,
        dtype=model_config.dtype, rngs=rngs))
  elif model_config.head == 'mlp':
    heads.replace_head(model, heads.MLPHead(
        in_features, model_config.head_hidden, len(class_names),
        dropout_rate=model_config.head_dropout, dtype=model_config.dtype, rngs=rngs))
  return model
