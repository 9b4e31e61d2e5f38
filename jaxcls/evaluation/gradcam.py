"""Grad-CAM (Selvaraju et al. 2017): where in the image the evidence for a class lies.

The forward pass is split at the last spatial stage: every model of the zoo
says where that is (`jaxcls.models.interface.Classifier.last_stage`: the last
convolution's output in the CNNs, the patch tokens entering the last block in
a ViT) and gives the rest of the network as a function of those activations
A [batch, h, w, C]. The weight of channel c is the spatial mean of
d logit_target / d A_c, and the map is ReLU(sum_c w_c A_c), normalised to
[0, 1] and upsampled to the image size. Nothing here knows a family.

`explain_files` and `plot_gradcam` apply it to a finished run's images and
draw each next to its map (`python -m jaxcls.cli.explain`, the report's
gradcam.png).
"""

import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use('Agg')  # Files only: no display on training machines.
# pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt
import numpy as np
from absl import logging
from flax import nnx

from jaxcls.evaluation import predict
from jaxcls.models.interface import Classifier
from jaxcls.training.steps import normalize

def last_stage_and_head(model: Classifier, x: jax.Array):
  """Normalised images -> (last stage's activations [batch, h, w, C], activations -> logits).

  `head(activations)` equals `model(x)`: the split changes nothing but where the
  gradient is taken. Where the stage ends is the model's own to say
  (`Classifier.last_stage`).
  """
  activations, to_features = model.last_stage(x)
  return activations, lambda a: model.classify(to_features(a))


@nnx.jit
def _gradcam(model, images, targets):
  """-> (cams [B, H, W] in [0, 1], logits [B, classes]); targets < 0 mean the predicted class."""
  activations, head = last_stage_and_head(model, images)

  def target_logit(a):
    logits = head(a).astype(jnp.float32)
    chosen = jnp.where(targets < 0, jnp.argmax(logits, axis=-1), targets)
    # Examples are independent in eval mode, so the gradient of the sum is
    # each example's own gradient.
    return jnp.take_along_axis(logits, chosen[:, None], axis=-1).sum(), logits

  grads, logits = jax.grad(target_logit, has_aux=True)(activations)
  weights = jnp.mean(grads.astype(jnp.float32), axis=(1, 2))  # [B, C]
  cams = nnx.relu(jnp.einsum('bhwc,bc->bhw', activations.astype(jnp.float32), weights))
  batch, height, width = images.shape[:3]
  cams = jax.image.resize(cams, (batch, height, width), method='bilinear')
  low = cams.min(axis=(1, 2), keepdims=True)
  high = cams.max(axis=(1, 2), keepdims=True)
  # A map with no positive evidence anywhere stays all zeros rather than 0/0.
  cams = jnp.where(high > low, (cams - low) / jnp.maximum(high - low, 1e-12), 0.0)
  return cams, logits


def gradcam(model: nnx.Module, images_normalised, class_index=None):
  """Grad-CAM maps of a batch: -> (cams [B, H, W] float32 in [0, 1], predicted [B] int32).

  Args:
    model: any model of the zoo (`jaxcls.models.interface.Classifier`).
      It is used in eval mode (BatchNorm's running statistics, no dropout)
      whatever mode it is in; the model itself is not changed.
    images_normalised: [B, H, W, 3] float images, normalised as the model's
      input (`jaxcls.training.steps.normalize`).
    class_index: the class to explain, an int or one per image; None (default)
      explains each image's predicted class.
  """
  if not isinstance(model, Classifier):
    raise TypeError(f'Grad-CAM explains models of the zoo (jaxcls.models.interface.Classifier), '
                    f'not a {type(model).__name__}')
  images = jnp.asarray(images_normalised)
  if images.ndim != 4:
    raise ValueError(f'images must be [batch, height, width, channels], got {images.shape}')
  model = nnx.view(model, deterministic=True, use_running_average=True,
                   raise_if_not_found=False)
  targets = jnp.broadcast_to(jnp.asarray(-1 if class_index is None else class_index, jnp.int32),
                             images.shape[:1])
  cams, logits = _gradcam(model, images, targets)
  return cams, jnp.argmax(logits, axis=-1).astype(jnp.int32)


def map_size(model: Classifier, image_size: int) -> tuple[int, int]:
  """(height, width) of the last stage's map at this input size: the resolution of a Grad-CAM
  map before it is upsampled (shapes only, nothing computed)."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  shape = nnx.eval_shape(lambda m, x: last_stage_and_head(m, x)[0], model, images).shape
  return shape[1], shape[2]


def coarse_map_note(model: Classifier, image_size: int) -> str | None:
  """Why the maps of this model at this input size cannot show where (a 1x1 last stage: the
  32x-downsampling ImageNet nets on 32 px digits), or None; logged and put on the figure."""
  height, width = map_size(model, image_size)
  if height * width > 1:
    return None
  note = (f'{type(model).__name__}\'s last stage is {height}x{width} at {image_size}x{image_size} '
          f'px: a Grad-CAM map cannot show where; a larger data.image_size can')
  logging.warning('Grad-CAM: %s', note)
  return note


_MAX_PAIRS_PER_ROW = 4  # (image, overlay) pairs side by side before wrapping.


def explain_files(run, paths, class_index: int | None = None):
  """-> (paths read, uint8 images [N, S, S, 3], cams [N, S, S], probabilities [N, classes]).

  Unreadable files are skipped with a warning.
  """
  data = run.config.data
  kept, images = [], []
  for path in paths:
    try:
      images.append(predict.load_and_preprocess(path, data.image_size, data.resize_size,
                                                data.get('interpolation') or 'bilinear'))
      kept.append(path)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Skipping unreadable image %s (%s: %s)', path, type(e).__name__, e)
  if not images:
    return kept, None, None, None
  images = np.stack(images)
  cams, probabilities = explain_images(run, images, class_index)
  return kept, images, cams, probabilities


def explain_images(run, images: np.ndarray, class_index: int | None = None):
  """uint8 images [N, S, S, 3] at the run's input size -> (cams [N, S, S], probabilities)."""
  data = run.config.data
  normalised = normalize(jnp.asarray(images), tuple(data.mean), tuple(data.std),
                         jnp.dtype(run.config.model.dtype))
  cams, _ = gradcam(run.model, normalised, class_index)
  return np.asarray(cams), predict.softmax(run.logits(images))


def plot_gradcam(paths, images, cams, probabilities, class_names, out, class_index=None,
                 alpha: float = 0.5, colormap: str = 'jet', note: str | None = None) -> Path:
  """Writes the grid of (image, overlay) pairs to `out` (a PNG) and returns its path; `note`
  (e.g. `coarse_map_note`'s) goes above the grid."""
  count = len(images)
  pairs_per_row = min(count, _MAX_PAIRS_PER_ROW)
  rows = math.ceil(count / pairs_per_row)
  fig, axes = plt.subplots(rows, 2 * pairs_per_row, squeeze=False,
                           figsize=(2 * pairs_per_row * 2.6, rows * 2.9))
  # Small inputs (digits at 16 px) are shown as their pixels, not smoothed away.
  interpolation = 'nearest' if images.shape[1] < 64 else 'bilinear'
  for ax in axes.flat:
    ax.axis('off')
  for i in range(count):
    image_ax, overlay_ax = axes[i // pairs_per_row, 2 * (i % pairs_per_row):][:2]
    predicted = int(np.argmax(probabilities[i]))
    name = os.path.basename(paths[i])
    image_ax.imshow(images[i], interpolation=interpolation)
    image_ax.set_title(name if len(name) <= 24 else name[:11] + '…' + name[-12:], fontsize=9)
    overlay_ax.imshow(images[i], interpolation=interpolation)
    overlay_ax.imshow(cams[i], cmap=colormap, alpha=alpha, vmin=0.0, vmax=1.0,
                      interpolation='bilinear')
    title = f'{class_names[predicted]} ({probabilities[i, predicted]:.0%})'
    if class_index is not None and class_index != predicted:
      title += f'\ncam: {class_names[class_index]}'
    overlay_ax.set_title(title, fontsize=9)
  if note:
    fig.suptitle(note, fontsize=10, color='darkred')
  fig.tight_layout()
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out
