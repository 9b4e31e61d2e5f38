"""`python -m jaxcls.cli.evaluate --workdir DIR [--workdir DIR2 ...]`: the report of finished runs.

Metrics, confusion matrix, per-class report, curves, mistakes and Grad-CAM of
one run, or of an ensemble of several (`jaxcls.evaluation.evaluate`), written
to WORKDIR/report (the run's own: test split, best checkpoint), or for another
split, step or setting to a folder of its own in it (WORKDIR/report/val, ...).
"""

import sys

from absl import app, flags

from jaxcls.cli.common import parse_step
from jaxcls.evaluation.evaluate import SPLITS, evaluate_and_report


flags.DEFINE_multi_string(
    'workdir', None, 'A run to evaluate; several: an ensemble (same classes and split).')
flags.DEFINE_enum('split', 'test', SPLITS, 'The split to evaluate.')
flags.DEFINE_string('step', 'best', "Checkpoint: 'best', 'latest' or a step number.")
flags.DEFINE_string(
    'output_dir', None, 'Where to write the report (default: WORKDIR/report for the test split '
    'at the best checkpoint with the run\'s own settings, the run\'s report; any other split, '
    'step or setting its own folder in it, e.g. WORKDIR/report/val, '
    'FIRST_WORKDIR/report/ensemble for several workdirs).')
flags.DEFINE_bool('tta_flip', None, "Overrides the run's config.evaluate.tta_flip.")
flags.DEFINE_integer('tta_crops', None, "Overrides the run's config.evaluate.tta_crops (1 or 5).")
flags.DEFINE_integer('top_k_checkpoints', None,
                     "Overrides the run's config.evaluate.top_k_checkpoints.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  args = flags.FLAGS
  if not args.workdir:
    raise app.UsageError('--workdir is required')
  step = parse_step(args.step)
  try:
    report = evaluate_and_report(
        args.workdir, output_dir=args.output_dir, split=args.split, step=step,
        tta_flip=args.tta_flip, tta_crops=args.tta_crops,
        top_k_checkpoints=args.top_k_checkpoints)
  except (FileNotFoundError, ValueError) as e:  # ConfigError is a ValueError.
    sys.exit(f'jaxcls evaluate: {e}')
  for name, result in report['results'].items():
    print(f"{name}: accuracy {result['accuracy']:.4f}")
  print(f"report -> {report['output_dir']}")


if __name__ == '__main__':
  app.run(main)
