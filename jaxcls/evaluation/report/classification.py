"""Classification metrics of predicted probabilities, as JSON-ready dicts, Markdown and CSV."""

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn import metrics as sk_metrics

AVERAGES = ('macro avg', 'weighted avg')


def top_k_accuracy(labels: np.ndarray, probabilities: np.ndarray, k: int) -> float:
  """Fraction of examples whose label is among the k most probable classes."""
  top_k = np.argsort(-probabilities, axis=-1, kind='stable')[:, :k]
  return float((top_k == labels[:, None]).any(axis=-1).mean())


def summarize(labels: np.ndarray, probabilities: np.ndarray,
              class_names: Sequence[str]) -> dict:
  """Accuracy, top-5 accuracy (more than 5 classes), macro/weighted averages and per-class
  precision, recall, F1 and support, as scikit-learn's `classification_report` computes them."""
  labels = np.asarray(labels)
  predictions = np.asarray(probabilities).argmax(axis=-1)
  report = sk_metrics.classification_report(
      labels, predictions, labels=list(range(len(class_names))), target_names=list(class_names),
      output_dict=True, zero_division=0)
  summary = {'accuracy': float((predictions == labels).mean()),
             'num_examples': int(len(labels))}
  if len(class_names) > 5:
    summary['top5_accuracy'] = top_k_accuracy(labels, probabilities, 5)
  for average in AVERAGES:
    summary[average] = _floats(report[average])
  summary['per_class'] = {name: _floats(report[name]) for name in class_names}
  return summary


def confusion_counts(labels: np.ndarray, probabilities: np.ndarray, num_classes: int) -> np.ndarray:
  """[true class, predicted class] counts."""
  return sk_metrics.confusion_matrix(labels, np.asarray(probabilities).argmax(axis=-1),
                                     labels=list(range(num_classes)))


def write_confusion_csv(path: Path, counts: np.ndarray, class_names: Sequence[str]) -> None:
  """Rows: true class; columns: predicted class; first row and column: the class names."""
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['true \\ predicted', *class_names])
    for name, row in zip(class_names, counts):
      writer.writerow([name, *(int(c) for c in row)])


def read_confusion_csv(path: Path) -> tuple[list[str], np.ndarray]:
  with open(path, newline='') as f:
    rows = list(csv.reader(f))
  return rows[0][1:], np.asarray([[int(c) for c in row[1:]] for row in rows[1:]], np.int64)


def to_markdown(report: dict) -> str:
  """The report (as `writer.write_report` builds it) as a Markdown document."""
  lines = [f'# Evaluation on the {report["split"]} split', '']
  for key, label in (('workdirs', 'Runs'), ('num_examples', 'Examples'),
                     ('num_classes', 'Classes'), ('tta', 'Test-time augmentation')):
    if report.get(key) not in (None, [], ''):
      value = report[key]
      value = ', '.join(f'`{v}`' for v in value) if isinstance(value, list) else value
      lines.append(f'- {label}: {value}')
  lines.append('')
  has_top5 = any('top5_accuracy' in r for r in report['results'].values())
  header = ['Model', 'Accuracy'] + (['Top-5 accuracy'] if has_top5 else []) + [
      'Macro F1', 'Weighted F1']
  lines += ['## Summary', '', _row(header), _row(['---'] + ['---:'] * (len(header) - 1))]
  for name, result in report['results'].items():
    cells = [f'**{name}**' if name == report['primary'] else name, _pct(result['accuracy'])]
    if has_top5:
      cells.append(_pct(result['top5_accuracy']) if 'top5_accuracy' in result else '')
    cells += [f'{result[a]["f1-score"]:.4f}' for a in AVERAGES]
    lines.append(_row(cells))
  lines.append('')
  for name, result in report['results'].items():
    if result.get('members'):
      lines.append(f'- {name}: mean of the softmax probabilities of '
                   + ', '.join(result['members']))
  if report.get('notes'):
    lines += [''] + [f'- {note}' for note in report['notes']]
  primary = report['results'][report['primary']]
  lines += ['', f'## Per class: {report["primary"]}', '',
            _row(['Class', 'Precision', 'Recall', 'F1', 'Support']),
            _row(['---', '---:', '---:', '---:', '---:'])]
  for name, scores in primary['per_class'].items():
    lines.append(_row([_escape(name)] + _scores(scores)))
  for average in AVERAGES:
    lines.append(_row([f'*{average}*'] + _scores(primary[average])))
  for task, summary in report.get('tasks', {}).items():
    lines += ['', f'## Task {_escape(task)}: {report["primary"]}', '',
              f'Accuracy {_pct(summary["accuracy"])} (class probabilities summed per value; '
              f'figure `confusion_matrix_{task}.png`).', '',
              _row(['Value', 'Precision', 'Recall', 'F1', 'Support']),
              _row(['---', '---:', '---:', '---:', '---:'])]
    for name, scores in summary['per_class'].items():
      lines.append(_row([_escape(name)] + _scores(scores)))
  lines += ['', 'Figures: `confusion_matrix.png` (raw counts in `confusion_matrix.csv`), '
            '`curves.png`, `misclassified.png`.', '']
  return '\n'.join(lines)


def _floats(scores: dict) -> dict:
  return {k: (int(v) if k == 'support' else float(v)) for k, v in scores.items()}


def _scores(scores: dict) -> list[str]:
  return [f'{scores["precision"]:.4f}', f'{scores["recall"]:.4f}', f'{scores["f1-score"]:.4f}',
          str(int(scores['support']))]


def _pct(value: float) -> str:
  return f'{100 * value:.2f}%'


def _escape(text: str) -> str:
  return str(text).replace('|', '\\|')


def _row(cells) -> str:
  return '| ' + ' | '.join(cells) + ' |'
