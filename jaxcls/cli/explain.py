"""Grad-CAM maps of a trained run: `python -m jaxcls.cli.explain --workdir DIR --images PATH...`.

Each image (files, or folders searched recursively) is preprocessed as
evaluation does and explained at the run's last convolutional stage
(`jaxcls.evaluation.gradcam`). The PNG (default DIR/report/gradcam.png) shows
each image next to its map overlaid, titled with the predicted class and its
probability (and the explained class when --class_index picks another).

    python -m jaxcls.cli.explain --workdir /tmp/run --images a.png b.jpg photos/
"""

import os
import sys

from absl import app, flags, logging

from jaxcls.cli.common import quiet_libraries, reopen
from jaxcls.evaluation.gradcam import coarse_map_note, explain_files, plot_gradcam
from jaxcls.evaluation.predict import list_image_files

FLAGS = flags.FLAGS


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
  quiet_libraries()
  files = list_image_files([*FLAGS.images, *argv[1:]])
  if not files:
    raise app.UsageError('give image files or folders with --images')
  if len(files) > FLAGS.max_images:
    logging.warning('Explaining the first %d of %d images (--max_images).', FLAGS.max_images,
                    len(files))
    files = files[:FLAGS.max_images]
  run = reopen('explain', FLAGS.workdir, FLAGS.step)
  if FLAGS.class_index is not None and FLAGS.class_index >= len(run.class_names):
    raise app.UsageError(f'--class_index={FLAGS.class_index}: the run has '
                         f'{len(run.class_names)} classes')
  kept, images, cams, probabilities = explain_files(run, files, FLAGS.class_index)
  if images is None:
    sys.exit('jaxcls explain: none of the images could be read')
  out = FLAGS.out or os.path.join(FLAGS.workdir, 'report', 'gradcam.png')
  plot_gradcam(kept, images, cams, probabilities, run.class_names, out, FLAGS.class_index,
               note=coarse_map_note(run.model, images.shape[1]))
  print(f'Grad-CAM of {len(kept)} images ({run.describe()}) -> {out}')


if __name__ == '__main__':
  app.run(main)
