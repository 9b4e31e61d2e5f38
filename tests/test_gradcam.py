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

ROOT = Path(__file__).resolve().parents[1]


class QuadrantModel(nnx.Module):
  """Sees only the bottom-left quadrant of its input: a 4x4/4 patch convolution of the
  masked image is its last stage, then global average pooling and a linear head."""

  def __init__(self, size: int, num_classes: int = 3):
    rngs = nnx.Rngs(0)
    self.mask = jnp.zeros((size, size, 1)).at[size // 2:, :size // 2].set(1.0)
    self.conv = nnx.Conv(3, 8, (4, 4), strides=4, padding='VALID', use_bias=False, rngs=rngs)
    self.fc = nnx.Linear(8, num_classes, rngs=rngs)

  def last_stage_and_head(self, x):
    return nnx.relu(self.conv(x * self.mask)), lambda a: self.fc(jnp.mean(a, axis=(1, 2)))

  def __call__(self, x):
    activations, head = self.last_stage_and_head(x)
    return head(activations)


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


def test_unknown_architecture_is_refused():
  with pytest.raises(TypeError, match='last_stage_and_head'):
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
