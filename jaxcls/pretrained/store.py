"""Converted checkpoints on disk, and loading any pretrained source into a model.

A converted checkpoint is a directory: `state/` (an Orbax checkpoint of the
model's variables in Flax's layout, under their canonical PyTorch keys) and `pretrained.json`, the metadata a
trainer needs to use the weights well: the architecture, the source file and
its sha256, the number of classes, and the input size, crop fraction and
normalisation the weights were trained with.
"""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxcls.pretrained.checkpoint_files import read_state_dict, sha256
from jaxcls.pretrained.convert import (WEIGHTS, CheckpointMismatchError, canonical_key,
                                      load_state_dict)

METADATA_FILE = 'pretrained.json'
# What torchvision's and timm's ImageNet weights expect, for raw files without metadata.
IMAGENET = dict(input_size=224, crop_pct=0.875, mean=(0.485, 0.456, 0.406),
                std=(0.229, 0.224, 0.225))


@dataclasses.dataclass(frozen=True)
class PretrainedInfo:
  arch: str
  source: str
  sha256: str
  layout: str
  num_classes: int
  input_size: int = IMAGENET['input_size']
  crop_pct: float = IMAGENET['crop_pct']
  mean: tuple[float, float, float] = IMAGENET['mean']
  std: tuple[float, float, float] = IMAGENET['std']


def cache_dir() -> Path:
  """Where users keep weights: $JAXCLS_HOME, default ~/.cache/jaxcls."""
  return Path(os.environ.get('JAXCLS_HOME', Path.home() / '.cache' / 'jaxcls'))


def save_converted(model: nnx.Module, out_dir: str | Path, info: PretrainedInfo) -> None:
  out_dir = Path(out_dir).resolve()
  out_dir.mkdir(parents=True, exist_ok=True)
  state = {canonical_key(path): np.asarray(v.get_value())
           for path, v in nnx.to_flat_state(nnx.state(model, WEIGHTS))}
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(out_dir / 'state', state, force=True)
  (out_dir / METADATA_FILE).write_text(json.dumps(dataclasses.asdict(info), indent=2))


def read_metadata(path: str | Path) -> PretrainedInfo | None:
  """The metadata of a converted directory; None for a raw checkpoint file."""
  metadata = Path(path) / METADATA_FILE
  if not metadata.is_file():
    return None
  fields = json.loads(metadata.read_text())
  fields['mean'], fields['std'] = tuple(fields['mean']), tuple(fields['std'])
  return PretrainedInfo(**fields)


def load_pretrained(model: nnx.Module, path: str | Path, *, arch: str,
                    keep_head: bool | None = None, layout: str | None = None) -> PretrainedInfo:
  """Loads a converted directory or a raw .pth/.safetensors file into `model`, strictly.

  The classifier head is loaded when it fits (same number of classes), else
  left freshly initialised; every other variable must come from the checkpoint.
  """
  path = Path(path)
  info = read_metadata(path) if path.is_dir() else None
  if path.is_dir() and info is None:
    raise CheckpointMismatchError(f'{path} is a directory without {METADATA_FILE}: not a '
                                  'checkpoint converted by `python -m jaxcls.convert`')
  if info is not None:
    if info.arch != arch:
      raise CheckpointMismatchError(f'{path} holds {info.arch} weights, not {arch}')
    with ocp.StandardCheckpointer() as checkpointer:
      state = checkpointer.restore(path.resolve() / 'state')
    load_state_dict(model, state, layout='jaxcls', keep_head=keep_head)
    return info
  state = read_state_dict(path)
  matched = load_state_dict(model, state, layout=layout, keep_head=keep_head)
  return PretrainedInfo(arch=arch, source=str(path.resolve()), sha256=sha256(path), layout=matched,
                        num_classes=_num_classes(state))


def _num_classes(state) -> int:
  """Outputs of the checkpoint's head: torchvision and timm save the classifier last."""
  linear = [np.shape(v)[0] for v in state.values() if np.ndim(v) == 2]
  return int(linear[-1]) if linear else -1
