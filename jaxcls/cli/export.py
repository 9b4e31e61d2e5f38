"""`python -m jaxcls.cli.export --workdir DIR --format onnx|savedmodel|tflite`: a trained
run's checkpoint as a model file that serves without JAX.

The model takes uint8 [N, S, S, 3] RGB images resized and cropped as `jaxcls predict` does
(S: the run's image size) and returns float32 logits; the normalisation is inside it.
Written (by default under WORKDIR/export/): model.onnx, saved_model/ or model.tflite, and
beside it <model>.json with the class names, the preprocessing and the parity figures.
Each export is run in its own runtime (ONNX Runtime, TensorFlow, the TFLite interpreter)
on up to 16 images (the run's test split, or --images) and compared with the JAX logits;
a relative difference above 1e-4 fails the command (the file is kept).

    python -m jaxcls.cli.export --workdir /tmp/run --format onnx
    jaxcls export --workdir /tmp/run --format tflite --out /tmp/model.tflite --images photos/
"""

import sys

from absl import app, flags

from jaxcls.cli.common import quiet_libraries, reopen
from jaxcls.evaluation import export as exporting

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'The run to export (its config.json and checkpoints).',
                    required=True)
flags.DEFINE_string('format', None, f'One of {", ".join(exporting.FORMATS)}.', required=True)
flags.DEFINE_string('out', None, 'File (a folder for savedmodel) to write; default '
                    'WORKDIR/export/model.onnx, saved_model or model.tflite.')
flags.DEFINE_string('step', 'best', "Checkpoint: 'best', 'latest' or a step number.")
flags.DEFINE_multi_string('images', [], 'Image files or folders to check the export on (up to '
                          "16 images); default: the run's test split.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  fmt = FLAGS.format.lower()
  if fmt not in exporting.FORMATS:
    sys.exit(f'jaxcls export: --format={FLAGS.format}: expected one of '
             f'{", ".join(exporting.FORMATS)}')
  quiet_libraries()
  run = reopen('export', FLAGS.workdir, FLAGS.step)
  try:
    result = exporting.export(run, fmt, FLAGS.out, FLAGS.images)
  except exporting.ExportParityError as e:
    sys.exit(f'jaxcls export: parity check failed: {e}')
  except (exporting.ExportError, FileExistsError, IsADirectoryError) as e:
    sys.exit(f'jaxcls export: {e}')
  p = result.parity
  print(f"{fmt}: {result.path} ({run.describe()})")
  print(f'parity on {p.images} images: max abs diff {p.max_abs_diff:.3g}, max rel diff '
        f'{p.max_rel_diff:.3g} (max |logit| {p.max_abs_logit:.3g}, tolerance '
        f'{exporting.TOLERANCE:g}); same top-1 on {p.same_top1}/{p.images}')
  print(f'metadata: {result.metadata_path}')


if __name__ == '__main__':
  app.run(main)
