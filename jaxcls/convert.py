"""Converts a PyTorch checkpoint for use by jaxcls, once, ahead of training.

    python -m jaxcls.convert --model resnet50 --src resnet50-0676ba61.pth --out DIR

writes DIR/state (an Orbax checkpoint) and DIR/pretrained.json (source file,
sha256, architecture, number of classes, input size, crop fraction, mean/std),
after checking that every tensor found its place. `config.model.pretrained=DIR`
(or `create_model(..., pretrained=DIR)`) then loads it without torch.
"""

import dataclasses
import sys

from absl import app, flags

_MODEL = flags.DEFINE_string('model', None, 'Architecture, e.g. resnet50 (see jaxcls.models).')
_SRC = flags.DEFINE_string('src', None, 'A .pth/.pt (needs torch) or .safetensors checkpoint.')
_OUT = flags.DEFINE_string('out', None, 'Output directory.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 0, "Classes of the checkpoint's head; 0: read "
                                    'them from the checkpoint.')
_LAYOUT = flags.DEFINE_string('layout', None, "Key layout ('torchvision', 'timm', ...); default: "
                              'the one that matches.')
_INPUT_SIZE = flags.DEFINE_integer('input_size', 224, 'Input size the weights were trained at.')
_CROP_PCT = flags.DEFINE_float('crop_pct', 0.875, 'Center-crop fraction of their evaluation.')
_MEAN = flags.DEFINE_list('mean', ['0.485', '0.456', '0.406'], 'Normalisation mean, RGB in [0, 1].')
_STD = flags.DEFINE_list('std', ['0.229', '0.224', '0.225'], 'Normalisation std, RGB in [0, 1].')
flags.mark_flags_as_required(['model', 'src', 'out'])


def main(argv):
  del argv
  from jaxcls.models import create_model  # pylint: disable=g-import-not-at-top
  from jaxcls.pretrained import checkpoint_files, store  # pylint: disable=g-import-not-at-top
  from jaxcls.pretrained.convert import CheckpointMismatchError  # pylint: disable=g-import-not-at-top
  try:
    state = checkpoint_files.read_state_dict(_SRC.value)
    num_classes = _NUM_CLASSES.value or store._num_classes(state)  # pylint: disable=protected-access
    model = create_model(_MODEL.value, num_classes)
    info = store.load_pretrained(model, _SRC.value, arch=_MODEL.value, keep_head=True,
                                 layout=_LAYOUT.value)
  except (checkpoint_files.CheckpointFileError, CheckpointMismatchError, ValueError) as e:
    sys.exit(f'jaxcls.convert: {e}')
  info = dataclasses.replace(
      info, num_classes=num_classes, input_size=_INPUT_SIZE.value, crop_pct=_CROP_PCT.value,
      mean=tuple(float(x) for x in _MEAN.value), std=tuple(float(x) for x in _STD.value))
  store.save_converted(model, _OUT.value, info)
  print(f'{_MODEL.value} ({info.layout} layout, {num_classes} classes) from {_SRC.value} '
        f'-> {_OUT.value}')


def run():
  app.run(main)


if __name__ == '__main__':
  run()
