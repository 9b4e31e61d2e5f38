"""Pretrained weights: read PyTorch checkpoints and convert them onto jaxcls models."""

from jaxcls.pretrained.checkpoint_files import CheckpointFileError, read_state_dict
from jaxcls.pretrained.convert import CheckpointMismatchError, canonical_key, load_state_dict

__all__ = ['CheckpointFileError', 'CheckpointMismatchError', 'canonical_key', 'load_state_dict',
           'read_state_dict']
