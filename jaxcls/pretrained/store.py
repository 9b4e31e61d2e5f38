"""From what a user names as pretrained weights to the file on disk and how to use it.

`resolve(spec)` takes any of:
- a registered tag, `efficientnet_lite0.tf_in1k` (`jaxcls.pretrained.registry`);
- `hf-hub:OWNER/REPO`, a timm repo on the Hugging Face Hub (its config.json
  names the architecture and the preprocessing);
- a directory written by `python -m jaxcls.cli.convert`: `state/` (an Orbax
  checkpoint of the model's variables in Flax's layout, under their canonical
  PyTorch keys) and `pretrained.json`, this module's `PretrainedInfo`;
- a raw `.pth`/`.safetensors` file. One whose sha256 is a registered tag's
  file gets that tag's preprocessing; any other gets the architecture's
  known defaults (`registry.default_preprocessing`) and its key layout is
  detected when it loads.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from jaxcls.pretrained import registry
from jaxcls.pretrained.checkpoint_files import read_state_dict, sha256
from jaxcls.pretrained.convert import (WEIGHTS, CheckpointMismatchError, canonical_key,
                                      load_state_dict)
from jaxcls.pretrained.fetch import PretrainedSourceError, cache_dir, fetch, fetch_hub

__all__ = ['PretrainedInfo', 'Weights', 'cache_dir', 'load_pretrained', 'read_metadata',
           'resolve', 'save_converted', 'PretrainedSourceError']

METADATA_FILE = 'pretrained.json'
HUB_PREFIX = 'hf-hub:'
# What torchvision's and timm's ImageNet weights expect, for raw files without metadata.
IMAGENET = dict(input_size=224, crop_pct=0.875, mean=registry.IMAGENET_MEAN,
                std=registry.IMAGENET_STD)


@dataclasses.dataclass(frozen=True)
class PretrainedInfo:
  """What a trainer needs to know of pretrained weights; results.json records it."""
  arch: str
  source: str
  sha256: str
  layout: str
  num_classes: int
  input_size: int = IMAGENET['input_size']
  crop_pct: float = IMAGENET['crop_pct']
  mean: tuple[float, float, float] = IMAGENET['mean']
  std: tuple[float, float, float] = IMAGENET['std']
  tag: str = ''
  interpolation: str = 'bilinear'
  # Constructor arguments the weights need (padding, BatchNorm epsilon); {} for most.
  arch_kwargs: dict = dataclasses.field(default_factory=dict)
  labels: str = ''
  license: str = ''

  @property
  def resize_size(self) -> int:
    return int(round(self.input_size / self.crop_pct))


@dataclasses.dataclass(frozen=True)
class Weights:
  """Resolved weights: the converted directory or checkpoint file, and how to use it."""
  path: Path
  info: PretrainedInfo


def names_architecture(spec: str) -> bool:
  """Whether `spec` itself says which architecture it holds (a raw file does not)."""
  spec = str(spec)
  return (spec.startswith(HUB_PREFIX) or registry.is_tag(spec) or
          (Path(spec).expanduser() / METADATA_FILE).is_file())


def resolve(spec: str, arch: str | None = None) -> Weights:
  """The weights `spec` names (see the module doc), fetched if they must be.

  `arch` is the architecture the caller builds; a tag, Hub repo or converted
  directory of another architecture is an error. A raw file needs it.
  """
  weights = _resolve(str(spec), arch)
  if arch is not None and weights.info.arch != arch:
    raise CheckpointMismatchError(f'{spec} holds {weights.info.arch} weights, not {arch}')
  return weights


def _resolve(spec: str, arch: str | None) -> Weights:
  if spec.startswith(HUB_PREFIX):
    return _from_hub(spec)
  if registry.is_tag(spec):
    cfg = registry.get_pretrained(spec)
    path, hub_config = fetch(cfg)
    info = _info_from_cfg(cfg, path)
    if hub_config is not None:
      info = _with_hub_preprocessing(info, hub_config)
    return Weights(path, info)
  path = Path(spec).expanduser()
  if path.is_dir():
    info = read_metadata(path)
    if info is None:
      raise CheckpointMismatchError(f'{path} is a directory without {METADATA_FILE}: not a '
                                    'checkpoint converted by `python -m jaxcls.cli.convert`')
    return Weights(path, info)
  if path.is_file():
    return Weights(path, _info_of_file(path, arch))
  if '/' not in spec and '.' in spec and not Path(spec).suffix.lower() in ('.pth', '.pt',
                                                                           '.safetensors'):
    registry.get_pretrained(spec)  # Raises with the closest tags.
  raise FileNotFoundError(f'pretrained weights {spec!r}: no such tag, file or directory '
                          '(python -m jaxcls.cli.models --pretrained lists the tags)')


def _info_from_cfg(cfg: registry.PretrainedCfg, path: Path, digest: str = '') -> PretrainedInfo:
  return PretrainedInfo(
      arch=cfg.arch, tag=cfg.name, source=str(path), sha256=digest or sha256(path), layout='',
      num_classes=cfg.num_classes, input_size=cfg.input_size, crop_pct=cfg.crop_pct,
      mean=tuple(cfg.mean), std=tuple(cfg.std), interpolation=cfg.interpolation,
      arch_kwargs=dict(cfg.arch_kwargs), labels=cfg.labels, license=cfg.license)


def _info_of_file(path: Path, arch: str | None) -> PretrainedInfo:
  digest = sha256(path)
  cfg = registry.find_by_sha256(digest, path.name)
  if cfg is not None and arch in (None, cfg.arch):
    logging.info('%s is the file of the pretrained tag %s: using its preprocessing', path,
                 cfg.name)
    return _info_from_cfg(cfg, path.resolve(), digest)
  if arch is None:
    raise ValueError(f'{path}: a raw checkpoint; name its architecture (config.model.name)')
  return PretrainedInfo(arch=arch, source=str(path.resolve()), sha256=digest, layout='',
                        num_classes=-1, **registry.default_preprocessing(arch))


def _from_hub(spec: str) -> Weights:
  repo_id = spec[len(HUB_PREFIX):]
  path, config = fetch_hub(repo_id)
  if config is None or config.get('architecture') not in registry.TIMM_ARCHS:
    known = ', '.join(sorted(registry.TIMM_ARCHS))
    raise CheckpointMismatchError(
        f'{spec}: its config.json names architecture '
        f'{(config or {}).get("architecture")!r}, which jaxcls does not build (it reads timm '
        f'repos of: {known})')
  arch, kwargs = registry.TIMM_ARCHS[config['architecture']]
  info = PretrainedInfo(arch=arch, tag=spec, source=str(path), sha256=sha256(path), layout='',
                        num_classes=int(config.get('num_classes', -1)), arch_kwargs=dict(kwargs),
                        labels='imagenet' if config.get('num_classes') == 1000 else '')
  return Weights(path, _with_hub_preprocessing(info, config))


def _with_hub_preprocessing(info: PretrainedInfo, config: dict) -> PretrainedInfo:
  """timm's pretrained_cfg (input size, crop, interpolation, mean, std) over the registered."""
  cfg = config.get('pretrained_cfg', {})
  updates = {}
  if 'input_size' in cfg:
    updates['input_size'] = int(cfg['input_size'][-1])
  for key in ('crop_pct', 'interpolation', 'license'):
    if key in cfg:
      updates[key] = cfg[key]
  for key in ('mean', 'std'):
    if key in cfg:
      updates[key] = tuple(float(v) for v in cfg[key])
  if updates.get('interpolation') not in (None, *registry.INTERPOLATIONS):
    updates['interpolation'] = 'bicubic'  # timm's 'random'/'lanczos' aside: its usual choice.
  return dataclasses.replace(info, **updates)


def save_converted(model: nnx.Module, out_dir: str | Path, info: PretrainedInfo) -> None:
  out_dir = Path(out_dir).resolve()
  out_dir.mkdir(parents=True, exist_ok=True)
  state = {canonical_key(path): np.asarray(v.get_value())
           for path, v in nnx.to_flat_state(nnx.state(model, WEIGHTS))}
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(out_dir / 'state', state, force=True)
  (out_dir / METADATA_FILE).write_text(json.dumps(dataclasses.asdict(info), indent=2))


def read_metadata(path: str | Path) -> PretrainedInfo | None:
  """The metadata of a converted directory; None for anything else."""
  metadata = Path(path) / METADATA_FILE
  if not metadata.is_file():
    return None
  fields = json.loads(metadata.read_text())
  fields['mean'], fields['std'] = tuple(fields['mean']), tuple(fields['std'])
  known = {f.name for f in dataclasses.fields(PretrainedInfo)}
  return PretrainedInfo(**{k: v for k, v in fields.items() if k in known})


def read_state(weights: Weights) -> dict[str, np.ndarray]:
  """The tensors of resolved weights: a converted directory's (Flax layout) or a file's."""
  if weights.path.is_dir():
    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(weights.path.resolve() / 'state')
  return read_state_dict(weights.path)


def load_pretrained(model: nnx.Module, spec: 'str | Path | Weights', *, arch: str,
                    keep_head: bool | None = None, layout: str | None = None,
                    state: dict | None = None) -> PretrainedInfo:
  """Loads weights into `model`, strictly; returns their info with the layout that matched.

  The classifier head is loaded when it fits (same number of classes), else
  left freshly initialised; every other variable must come from the weights.
  """
  weights = spec if isinstance(spec, Weights) else resolve(str(spec), arch)
  if weights.info.arch != arch:
    raise CheckpointMismatchError(f'{weights.path} holds {weights.info.arch} weights, not {arch}')
  state = read_state(weights) if state is None else state
  if weights.path.is_dir():
    load_state_dict(model, state, layout='jaxcls', keep_head=keep_head)
    return weights.info
  matched = load_state_dict(model, state, layout=layout, keep_head=keep_head)
  return dataclasses.replace(weights.info, layout=matched, num_classes=(
      weights.info.num_classes if weights.info.num_classes > 0 else num_classes_of(state)))


def num_classes_of(state) -> int:
  """Outputs of the checkpoint's head: torchvision and timm save the classifier last."""
  linear = [np.shape(v)[0] for v in state.values() if np.ndim(v) == 2]
  return int(linear[-1]) if linear else -1
