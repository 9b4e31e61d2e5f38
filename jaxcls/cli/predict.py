"""`python -m jaxcls.cli.predict --workdir DIR IMAGE_OR_FOLDER...`: classify image files.

Prints the top classes of each image and writes them to a CSV
(`jaxcls.evaluation.predict`); unreadable files are listed, not fatal.
"""

import os
import sys

from absl import app, flags

from jaxcls.cli.common import quiet_libraries, reopen

from jaxcls.evaluation.predict import (IMAGE_EXTENSIONS, format_table, list_image_files,
                                       predict_files, printable, write_csv)

FLAGS = flags.FLAGS


flags.DEFINE_string('workdir', None, 'The run to predict with (its config.json and checkpoints).',
                    required=True)
flags.DEFINE_string('step', 'best', "Checkpoint: 'best', 'latest' or a step number.")
flags.DEFINE_integer('top_k', 5, 'Classes to report per image.', lower_bound=1)
flags.DEFINE_string('out', None, 'CSV to write (default: WORKDIR/predictions.csv).')
flags.DEFINE_integer('batch_size', 64, 'Images per forward pass.', lower_bound=1)


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('give image files or folders to classify')
  quiet_libraries()
  files = list_image_files(argv[1:])
  if not files:
    sys.exit(f'jaxcls predict: no {"/".join(IMAGE_EXTENSIONS)} images in {argv[1:]}')
  run = reopen('predict', FLAGS.workdir, FLAGS.step)
  predictions = predict_files(run, files, FLAGS.top_k, FLAGS.batch_size)
  readable = [p for p in predictions if p.error is None]
  unreadable = [p for p in predictions if p.error is not None]
  out = FLAGS.out or os.path.join(FLAGS.workdir, 'predictions.csv')
  if readable:
    print(format_table(readable))
    write_csv(readable, out)
    print(f'{len(readable)} images ({run.describe()}) -> {out}')
  if unreadable:
    print(f'skipped {len(unreadable)} unreadable file(s):', file=sys.stderr)
    for p in unreadable:
      print(f'  {printable(p.path)}: {p.error}', file=sys.stderr)
  if not readable:
    sys.exit('jaxcls predict: none of the files could be read')


if __name__ == '__main__':
  app.run(main)
