"""Converts a PyTorch checkpoint for use by jaxcls, once, ahead of training.

    python -m jaxcls.cli.convert --model resnet50 --src resnet50-0676ba61.pth --out DIR

writes DIR/state (an Orbax checkpoint) and DIR/pretrained.json (source file,
sha256, architecture, number of classes, input size, crop fraction, mean/std),
after checking that every tensor found its place. `config.model.pretrained=DIR`
(or `create_model(..., pretrained=DIR)`) then loads it without torch.
"""

import dataclasses
import sys

from absl import app, flags

from jaxcls.models.registry import create_model_with_info
from jaxcls.pretrained import checkpoint_files, store
from jaxcls.pretrained.convert import CheckpointMismatchError

_MODEL = flags.DEFINE_string('model', None, 'Architecture, e.g. resnet50 (see jaxcls.models); '
                             'a tag or Hub repo in --src names it.')
_SRC = flags.DEFINE_string('src', None, 'A pretrained tag (efficientnet_lite0.tf_in1k), '
                           'hf-hub:OWNER/REPO, or a .pth/.pt (needs torch) or .safetensors file.')
_OUT = flags.DEFINE_string('out', None, 'Output directory.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 0, "Classes of the checkpoint's head; 0: read "
                                    'them from the checkpoint.')
# Unless given, the weights' own: a tag's, or the architecture's known defaults (ImageNet's
# 224, 0.875, mean and std; EfficientNet-Lite's (x - 127) / 128).
_INPUT_SIZE = flags.DEFINE_integer('input_size', 224, 'Input size the weights were trained at.')
_CROP_PCT = flags.DEFINE_float('crop_pct', 0.875, 'Center-crop fraction of their evaluation.')
_MEAN = flags.DEFINE_list('mean', ['0.485', '0.456', '0.406'], 'Normalisation mean, RGB in [0, 1].')
_STD = flags.DEFINE_list('std', ['0.229', '0.224', '0.225'], 'Normalisation std, RGB in [0, 1].')
flags.mark_flags_as_required(['src', 'out'])


def main(argv):
  del argv
  errors = (checkpoint_files.CheckpointFileError, CheckpointMismatchError,
            store.PretrainedSourceError, FileNotFoundError, KeyError, ValueError)
  try:
    arch = _MODEL.value
    if not store.names_architecture(_SRC.value) and not arch:
      raise ValueError(f'--src={_SRC.value} is a raw checkpoint: name its architecture with --model')
    weights = store.resolve(_SRC.value, None if store.names_architecture(_SRC.value) else arch)
    if arch and weights.info.arch != arch:
      raise ValueError(f'--src={_SRC.value} holds {weights.info.arch} weights, not --model={arch}')
    num_classes = _NUM_CLASSES.value or (
        weights.info.num_classes if weights.info.num_classes > 0
        else store.num_classes_of(store.read_state(weights)))
    model, info = create_model_with_info(weights.info.arch, num_classes, pretrained=_SRC.value)
  except errors as e:
    sys.exit(f'jaxcls convert: {e.args[0] if isinstance(e, KeyError) else e}')
  # The weights' own preprocessing (a tag's, or the architecture's defaults) unless given.
  updates = dict(num_classes=num_classes)
  for name, flag in (('input_size', _INPUT_SIZE), ('crop_pct', _CROP_PCT), ('mean', _MEAN),
                     ('std', _STD)):
    if flags.FLAGS[name].present:
      updates[name] = tuple(float(x) for x in flag.value) if name in ('mean', 'std') else flag.value
  info = dataclasses.replace(info, **updates)
  store.save_converted(model, _OUT.value, info)
  print(f'{info.arch} ({info.layout} layout, {num_classes} classes) from {_SRC.value} '
        f'-> {_OUT.value}')


def run():
  app.run(main)


if __name__ == '__main__':
  run()
