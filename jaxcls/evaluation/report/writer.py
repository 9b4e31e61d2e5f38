"""`write_report`: metrics, tables and figures of one evaluation into one folder."""

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from absl import logging

from jaxcls.evaluation.report import classification, figures, tensorboard
from jaxcls.data.label_tasks import Tasks
from jaxcls.training.results import strict_json

NUM_MISCLASSIFIED = 16


def write_report(output_dir: str | Path, *, split: str, class_names: Sequence[str],
                 labels: np.ndarray, results: dict[str, dict], primary: str,
                 images: Callable[[np.ndarray], np.ndarray] | None = None,
                 histories: dict[str, tuple[list[dict], int | None]] | None = None,
                 info: dict | None = None, notes: Sequence[str] = (),
                 tensorboard_dir: str | Path | None = None, tensorboard_step: int = 0,
                 tensorboard_prefix: str = 'report', tasks: Tasks | None = None) -> dict:
  """Writes classification_report.{md,json}, confusion_matrix.{png,csv}, curves.png and
  misclassified.png into `output_dir`, and the PNGs as images to `tensorboard_dir`.
  With `tasks` (classes that combine several labels), each task also gets its
  own report (from the class probabilities summed per task value) and
  confusion_matrix_{task}.png.

  `results`: {name: {'probabilities': float [N, C], optional 'members': [names], 'tta': str}},
  each reported side by side; the figures show `primary`. `images(indices)` gives the
  uint8 images of those examples for the misclassified grid; `histories` the
  training curves, {run label: (results.json history, best epoch)}. Returns the
  JSON report.
  """
  output_dir = Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  labels = np.asarray(labels)
  class_names = list(class_names)
  if primary not in results:
    raise ValueError(f'primary result {primary!r} is not one of {list(results)}')
  report = dict(split=split, num_examples=int(len(labels)), num_classes=len(class_names),
                **(info or {}), class_names=class_names, primary=primary, results={},
                notes=list(notes))
  for name, result in results.items():
    summary = classification.summarize(labels, result['probabilities'], class_names)
    for key in ('members', 'tta'):
      if result.get(key):
        summary[key] = result[key]
    report['results'][name] = summary
  task_counts = {}
  if tasks is not None:
    probabilities = np.asarray(results[primary]['probabilities'])
    report['tasks'] = {}
    for t, task in enumerate(tasks.names):
      task_labels, task_probabilities = tasks.class_tasks[labels, t], tasks.marginal(probabilities, t)
      report['tasks'][task] = classification.summarize(task_labels, task_probabilities,
                                                       tasks.values[t])
      task_counts[task] = classification.confusion_counts(task_labels, task_probabilities,
                                                          len(tasks.values[t]))
  (output_dir / 'classification_report.json').write_text(strict_json(report))
  (output_dir / 'classification_report.md').write_text(classification.to_markdown(report))

  probabilities = np.asarray(results[primary]['probabilities'])
  counts = classification.confusion_counts(labels, probabilities, len(class_names))
  classification.write_confusion_csv(output_dir / 'confusion_matrix.csv', counts, class_names)
  pngs = {'confusion_matrix': output_dir / 'confusion_matrix.png'}
  figures.save_png(figures.confusion_matrix_figure(counts, class_names, title=primary),
                   pngs['confusion_matrix'])
  for t, (task, task_count) in enumerate(task_counts.items()):
    pngs[f'confusion_matrix_{task}'] = output_dir / f'confusion_matrix_{task}.png'
    figures.save_png(figures.confusion_matrix_figure(task_count, tasks.values[t],
                                                     title=f'{task}: {primary}'),
                     pngs[f'confusion_matrix_{task}'])
  if histories and any(history for history, _ in histories.values()):
    pngs['curves'] = output_dir / 'curves.png'
    figures.save_png(figures.curves_figure(histories), pngs['curves'])
  else:
    logging.info('report: no training history, so no curves.png')
  if images is not None:
    pngs['misclassified'] = output_dir / 'misclassified.png'
    indices = most_confident_mistakes(labels, probabilities, NUM_MISCLASSIFIED)
    predicted = probabilities[indices].argmax(axis=-1)
    figures.save_png(figures.misclassified_figure(
        images(indices) if len(indices) else np.zeros((0, 1, 1, 3), np.uint8),
        [class_names[i] for i in labels[indices]], [class_names[i] for i in predicted],
        probabilities[indices, predicted], title=primary), pngs['misclassified'])
  if tensorboard_dir is not None:
    tensorboard.write_images(Path(tensorboard_dir), tensorboard_step,
                             {f'{tensorboard_prefix}/{name}': path for name, path in pngs.items()})
  logging.info('report: %s (%s accuracy %.4f)', output_dir, primary,
               report['results'][primary]['accuracy'])
  return report


def most_confident_mistakes(labels: np.ndarray, probabilities: np.ndarray,
                            count: int) -> np.ndarray:
  """Indices of up to `count` misclassified examples, highest predicted probability first."""
  predicted = probabilities.argmax(axis=-1)
  wrong = np.flatnonzero(predicted != labels)
  confidence = probabilities[wrong, predicted[wrong]]
  return wrong[np.argsort(-confidence, kind='stable')[:count]]
