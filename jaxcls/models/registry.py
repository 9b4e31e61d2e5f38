"""Name -> constructor registry, so configs pick architectures by name (as timm does)."""

import dataclasses
import inspect
from collections.abc import Callable

from absl import logging
from flax import nnx

from jaxcls.errors import ConfigProblems, either
from jaxcls.models import heads
from jaxcls.models.conv import LOWERINGS, set_conv_lowering
from jaxcls.models.interface import check_model, interface_errors, model_class
from jaxcls.pretrained import registry as tags
from jaxcls.pretrained import store
from jaxcls.pretrained.convert import match_layout

_MODELS: dict[str, Callable[..., nnx.Module]] = {}
# name -> {checkpoint layout: constructor arguments that layout's weights need}.
_LAYOUT_ARCH_KWARGS: dict[str, dict[str, dict]] = {}


def register(name: str, *, layout_arch_kwargs: dict[str, dict] | None = None
             ) -> Callable[[Callable[..., nnx.Module]], Callable[..., nnx.Module]]:
  """Decorator: makes `create_model(name, ...)` call the decorated constructor.

  `layout_arch_kwargs`: for architectures whose checkpoints in different key
  layouts were trained with different settings (EfficientNet: TF's "SAME"
  padding and BatchNorm epsilon 1e-3 in efficientnet_pytorch's layout, PyTorch's
  symmetric padding and 1e-5 in timm's and torchvision's), what a raw
  checkpoint of each layout needs.

  The constructor must build a `jaxcls.models.interface.Classifier` that
  defines the interface's own members (last_stage, group_patterns, head_name;
  features is checked on the built model): a family that does not is refused here, not found out by
  Grad-CAM at the end of a run.
  """

  def add(constructor):
    if name in _MODELS:
      raise ValueError(f'model {name!r} is registered twice')
    problems = interface_errors(model_class(constructor))
    if problems:
      raise TypeError(f'model {name!r} does not implement the model interface: '
                      + '; '.join(problems))
    _MODELS[name] = constructor
    if layout_arch_kwargs:
      _LAYOUT_ARCH_KWARGS[name] = layout_arch_kwargs
    return constructor

  return add


def list_models() -> list[str]:
  return sorted(_MODELS)


def model_family(name: str) -> type:
  """The class a registered name builds (ResNet for 'resnet50')."""
  return model_class(_MODELS[name.partition('.')[0]])


def create_model(name: str, num_classes: int = 1000, *, seed: int = 0,
                 pretrained: 'str | bool | None' = None, conv_lowering: str = 'auto',
                 **kwargs) -> nnx.Module:
  """Builds a registered model, freshly initialised or from pretrained weights.

  Args:
    name: a name from `list_models()`, e.g. 'resnet50', optionally with a
      pretrained tag as timm names them: 'efficientnet_lite0.tf_in1k'.
    num_classes: outputs of the classifier head.
    seed: seed of the parameter initialisation (of the head, when pretrained).
    pretrained: True (the tag in `name`, else the architecture's default tag),
      a tag, 'hf-hub:OWNER/REPO', a directory written by `python -m
      jaxcls.cli.convert`, or a PyTorch `.pth`/`.safetensors` file converted on the
      fly (`jaxcls.pretrained.store.resolve`). Every variable comes from it
      except a head whose number of classes differs, which stays fresh. The
      constructor arguments the weights need (e.g. EfficientNet's padding and
      BatchNorm epsilon) come with them; `kwargs` override them.
    conv_lowering: 'auto' (on CPU, the convolutions XLA:CPU is slow at run as
      patch matmuls or shifted sums; XLA's elsewhere: `jaxcls.models.conv`) or
      'xla' (always XLA's convolution).
    **kwargs: passed to the constructor (e.g. `width`, `dtype`).

  After `model.eval()`, `model(images)` maps a float32 NHWC batch, already
  normalised, to logits.
  """
  return create_model_with_info(name, num_classes, seed=seed, pretrained=pretrained,
                                conv_lowering=conv_lowering, **kwargs)[0]


def create_model_with_info(name: str, num_classes: int = 1000, *, seed: int = 0,
                           pretrained: 'str | bool | None' = None, conv_lowering: str = 'auto',
                           **kwargs):
  """`create_model`, and the `PretrainedInfo` of its weights (None from scratch)."""
  arch, _, tag = name.partition('.')
  if arch not in _MODELS:
    raise ValueError(f'unknown model {arch!r}; known models: {", ".join(list_models())}')
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes}')
  if pretrained is True:
    pretrained = name if tag else tags.default_tag(arch)
  if not pretrained:
    model = _MODELS[arch](num_classes=num_classes, rngs=nnx.Rngs(seed), **kwargs)
    check_model(model)
    return set_conv_lowering(model, conv_lowering), None
  weights = store.resolve(str(pretrained), arch)
  state = store.read_state(weights)
  needed = weights_arch_kwargs(arch, weights, state, **kwargs)
  overridden = {k: (v, kwargs[k]) for k, v in needed.items() if k in kwargs and kwargs[k] != v}
  if overridden:
    logging.warning('%s: the weights %s were trained with %s; building with %s as asked',
                    arch, pretrained, {k: v for k, (v, _) in overridden.items()},
                    {k: v for k, (_, v) in overridden.items()})
  built = {**needed, **kwargs}
  model = _MODELS[arch](num_classes=num_classes, rngs=nnx.Rngs(seed), **built)
  check_model(model)
  info = store.load_pretrained(model, weights, arch=arch, state=state)
  info = dataclasses.replace(info, arch_kwargs={k: built[k] for k in needed})
  return set_conv_lowering(model, conv_lowering), info


def weights_arch_kwargs(arch: str, weights, state=None, **kwargs) -> dict:
  """The constructor arguments resolved `weights` need (`jaxcls.pretrained.store.Weights`).

  A tag and a converted directory record them. For a raw checkpoint they follow
  from its key layout, as the architecture registered them: EfficientNet's
  efficientnet_pytorch weights are TF's ("SAME" padding, epsilon 1e-3), timm's
  and torchvision's own pad symmetrically with 1e-5.
  """
  if weights.info.arch_kwargs or weights.info.tag or weights.path.is_dir():
    return dict(weights.info.arch_kwargs)
  constructor, by_layout = _MODELS[arch], _LAYOUT_ARCH_KWARGS.get(arch)
  if not by_layout:
    return {}
  state = store.read_state(weights) if state is None else state
  kwargs = {k: v for k, v in kwargs.items() if k not in ('dtype',)}
  abstract = nnx.eval_shape(lambda: constructor(num_classes=1, rngs=nnx.Rngs(0), **kwargs))
  layout = match_layout(abstract, state)
  needed = dict(by_layout.get(layout, {}))
  if needed:
    logging.info('%s: a %s checkpoint in %s\'s layout: building with %s', weights.path, arch,
                 layout, ', '.join(f'{k}={v!r}' for k, v in needed.items()))
  return needed


# config.model fields that are constructor arguments of some families only, when set.
ARCH_FIELDS = ('padding', 'batch_norm_epsilon', 'aux_logits')


def accepts(name: str, argument: str) -> bool:
  """Whether the registered model's constructor takes `argument` (e.g. 'aux_logits')."""
  return argument in inspect.signature(model_class(_MODELS[name]).__init__).parameters


DTYPES = ('float32', 'bfloat16')
HEADS = ('linear', 'mlp')


def config_errors(model_config) -> list[str]:
  """What is wrong with `config.model` (`model_from_config` builds it)."""
  c, p = model_config, ConfigProblems('model', model_config)
  p.check(c.name in list_models(), 'name', f'known models: {", ".join(list_models())}')
  p.check(c.width >= 0, 'width', 'must be >= 0 (0: the architecture\'s own)')
  p.check(c.dtype in DTYPES, 'dtype', f'expected {either(DTYPES)}')
  p.check(c.head in HEADS, 'head', f'expected {either(HEADS)}')
  p.check(c.conv_lowering in LOWERINGS, 'conv_lowering', f'expected one of {LOWERINGS}')
  p.check(c.head_hidden >= 1, 'head_hidden', 'must be >= 1')
  p.check(c.padding in ('', 'same', 'symmetric'), 'padding',
          "expected 'same', 'symmetric' or empty (the weights')")
  p.check(c.batch_norm_epsilon >= 0, 'batch_norm_epsilon', 'must be >= 0 (0: automatic)')
  known = c.name in list_models()
  for field in ARCH_FIELDS:
    takers = [n for n in list_models() if accepts(n, field)]
    families = sorted({model_family(n).__name__ for n in takers})
    p.check(not c.get(field) or not known or c.name in takers, field,
            f'only {", ".join(families)} take it, not {c.name}')
  p.check(c.get('aux_weight', 0.3) >= 0, 'aux_weight', 'must be >= 0')
  p.check(0 <= c.head_dropout < 1, 'head_dropout', 'must be in [0, 1)')
  return p


def model_from_config(model_config, class_names, tasks=None, *, seed: int = 0,
                      pretrained: bool = True, return_info: bool = False,
                      image_size: int | None = None):
  """The model `config.model` describes, for these classes, with its configured head.

  Args:
    model_config: `config.model`.
    class_names: the data set's classes (their count sizes the head).
    tasks: `jaxcls.data.label_tasks.Tasks` with `config.tasks.mode == 'heads'`: one head
      per task (a `MultiTaskHead`); None: one head over the classes.
    seed: initialisation seed.
    pretrained: load `model_config.pretrained` (off to build a skeleton that
      a checkpoint restore fills anyway).
    return_info: also return the weights' `PretrainedInfo` (None from scratch).
    image_size: the input size (`config.data.image_size`), for the models
      whose parameters depend on it (a ViT's position embeddings, resampled
      from the checkpoint's size as timm does).

  Pretrained weights load into the architecture's own head first (kept when
  the classes match), then a configured MLP or multi-task head replaces it.
  """
  # A run's saved config.json from before model.conv_lowering existed has no such field.
  kwargs = dict(dtype=model_config.dtype,
                conv_lowering=model_config.get('conv_lowering', 'auto'))
  if model_config.width:
    kwargs['width'] = model_config.width
  kwargs.update({k: model_config[k] for k in ARCH_FIELDS if model_config.get(k)})
  if model_config.get('aux_logits'):
    kwargs['aux_weight'] = model_config.aux_weight
  if image_size and accepts(model_config.name, 'img_size'):
    kwargs['img_size'] = image_size
  model, info = create_model_with_info(
      model_config.name, len(class_names), seed=seed,
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
  if info is not None and model_config.get('head_zero_init', False) and (
      info.num_classes != len(class_names) or tasks is not None or model_config.head == 'mlp'):
    heads.zero_output_layer(heads.get_submodule(model, model.head_name))
  return (model, info) if return_info else model
