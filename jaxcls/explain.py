"""Grad-CAM maps of a trained run: `python -m jaxcls.explain --workdir DIR --images PATH...`.

Each image (files, or folders searched recursively) is preprocessed as
evaluation does and explained by `jaxcls.gradcam.gradcam` at the run's last
convolutional stage. The PNG (default DIR/report/gradcam.png) shows each image
next to its map overlaid, titled with the predicted class and its probability
(and the explained class when --class_index picks another).

    python -m jaxcls.explain --workdir /tmp/run --images a.png b.jpg photos/
"""

import math
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use('Agg')  # Files only: no display on training machines.
# pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt
import numpy as np
from absl import app, flags, logging

from jaxcls import predict

FLAGS = flags.FLAGS
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
  from jaxcls.gradcam import gradcam
  from jaxcls.steps import normalize
  import jax.numpy as jnp
  data = run.config.data
  normalised = normalize(jnp.asarray(images), tuple(data.mean), tuple(data.std),
                         jnp.dtype(run.config.model.dtype))
  cams, _ = gradcam(run.model, normalised, class_index)
  return np.asarray(cams), predict.softmax(run.logits(images))


def plot_gradcam(paths, images, cams, probabilities, class_names, out, class_index=None,
                 alpha: float = 0.5, colormap: str = 'jet') -> Path:
  """Writes the grid of (image, overlay) pairs to `out` (a PNG) and returns its path."""
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
  fig.tight_layout()
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def define_flags():
  flags.DEFINE_string('workdir', None, 'The run to explain (its config.json and checkpoints).',
                      required=True)
  flags.DEFINE_multi_string('images', [], 'Image files or folders; further paths may follow '
                            'as arguments (`--images a.png b.png`).')
  flags.DEFINE_integer('class_index', None, 'Class to explain (default: each image\'s '
                       'predicted class).', lower_bound=0)
  flags.DEFINE_string('out', None, 'PNG to write (default: WORKDIR/report/gradcam.png).')
  flags.DEFINE_string('step', 'best', "Checkpoint: 'best', 'latest' or a step number.")
  flags.DEFINE_integer('max_images', 32, 'At most this many images in the grid.', lower_bound=1)


def main(argv):
  predict.quiet_libraries()
  from jaxcls.runs import load_run
  files = predict.list_image_files([*FLAGS.images, *argv[1:]])
  if not files:
    raise app.UsageError('give image files or folders with --images')
  if len(files) > FLAGS.max_images:
    logging.warning('Explaining the first %d of %d images (--max_images).', FLAGS.max_images,
                    len(files))
    files = files[:FLAGS.max_images]
  run = load_run(FLAGS.workdir, predict.parse_step(FLAGS.step))
  if FLAGS.class_index is not None and FLAGS.class_index >= len(run.class_names):
    raise app.UsageError(f'--class_index={FLAGS.class_index}: the run has '
                         f'{len(run.class_names)} classes')
  kept, images, cams, probabilities = explain_files(run, files, FLAGS.class_index)
  if images is None:
    sys.exit('jaxcls.explain: none of the images could be read')
  out = FLAGS.out or os.path.join(FLAGS.workdir, 'report', 'gradcam.png')
  plot_gradcam(kept, images, cams, probabilities, run.class_names, out, FLAGS.class_index)
  print(f'Grad-CAM of {len(kept)} images (checkpoint step {run.step}) -> {out}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
