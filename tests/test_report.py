"""The report is written from labels and probabilities alone: metrics as scikit-learn computes
them, a confusion matrix CSV, and PNG figures that open as images."""

import json

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as sk_metrics

from jaxcls.evaluation.report import classification, figures, write_report
from jaxcls.evaluation.report.writer import most_confident_mistakes


def _predictions(num_classes, num_examples=300, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, num_examples)
  logits = rng.normal(size=(num_examples, num_classes))
  logits[np.arange(num_examples), labels] += 1.5  # Mostly right, some mistakes.
  probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  return labels, probabilities.astype(np.float32)


def _history(epochs=4):
  return [dict(epoch=e, step=10 * e, train=dict(loss=2.0 / e, accuracy=0.5 + 0.1 * e,
                                                learning_rate=0.1),
               val=dict(loss=2.2 / e, accuracy=0.45 + 0.1 * e)) for e in range(1, epochs + 1)]


def _images(indices):
  return np.random.default_rng(0).integers(0, 256, (len(indices), 16, 16, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def report_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp('report')
  labels, probabilities = _predictions(10)
  names = [f'class {i}' for i in range(10)]
  write_report(directory, split='test', class_names=names, labels=labels,
               results={'model': {'probabilities': probabilities}}, primary='model',
               images=_images, histories={'run': (_history(), 3)},
               tensorboard_dir=directory / 'tb', tensorboard_step=7)
  return directory, labels, probabilities, names


def test_per_class_figures_equal_sklearn_classification_report(report_dir):
  directory, labels, probabilities, names = report_dir
  expected = sk_metrics.classification_report(labels, probabilities.argmax(-1),
                                              target_names=names, output_dict=True)
  result = json.loads((directory / 'classification_report.json').read_text())['results']['model']
  for name in names:
    assert result['per_class'][name] == pytest.approx(expected[name])
  for average in ('macro avg', 'weighted avg'):
    assert result[average] == pytest.approx(expected[average])
  assert result['accuracy'] == pytest.approx(expected['accuracy'])


def test_top5_accuracy_is_reported_only_past_five_classes(report_dir):
  directory, labels, probabilities, _ = report_dir
  result = json.loads((directory / 'classification_report.json').read_text())['results']['model']
  assert result['top5_accuracy'] == pytest.approx(
      sk_metrics.top_k_accuracy_score(labels, probabilities, k=5))
  labels, probabilities = _predictions(5)
  assert 'top5_accuracy' not in classification.summarize(labels, probabilities, list('abcde'))


def test_confusion_matrix_csv_equals_sklearn(report_dir):
  directory, labels, probabilities, names = report_dir
  header, counts = classification.read_confusion_csv(directory / 'confusion_matrix.csv')
  assert header == names
  np.testing.assert_array_equal(counts, sk_metrics.confusion_matrix(labels,
                                                                    probabilities.argmax(-1)))


def test_markdown_lists_every_class_and_the_summary(report_dir):
  directory, _, _, names = report_dir
  markdown = (directory / 'classification_report.md').read_text()
  assert '## Summary' in markdown and 'Top-5 accuracy' in markdown
  assert all(f'| {name} |' in markdown for name in names)


@pytest.mark.parametrize('name', ['confusion_matrix', 'curves', 'misclassified'])
def test_every_figure_is_a_valid_png_of_sensible_size(report_dir, name):
  directory = report_dir[0]
  with Image.open(directory / f'{name}.png') as image:
    image.verify()
  with Image.open(directory / f'{name}.png') as image:
    assert image.format == 'PNG'
    assert 300 <= min(image.size) and max(image.size) <= 4000


def test_figures_are_written_as_tensorboard_images(report_dir):
  pytest.importorskip('clu.metric_writers')
  assert list((report_dir[0] / 'tb').glob('events.out.tfevents.*'))


def test_confusion_matrix_of_100_classes_stays_legible_in_size(tmp_path):
  labels, probabilities = _predictions(100, num_examples=2000)
  counts = classification.confusion_counts(labels, probabilities, 100)
  figures.save_png(figures.confusion_matrix_figure(
      counts, [f'a rather long class name {i}' for i in range(100)]), tmp_path / 'cm.png')
  with Image.open(tmp_path / 'cm.png') as image:
    assert 1500 <= image.size[0] <= 4000 and 1500 <= image.size[1] <= 4000


def test_no_mistakes_still_gives_a_misclassified_figure(tmp_path):
  labels = np.arange(6) % 3
  probabilities = np.eye(3, dtype=np.float32)[labels]
  write_report(tmp_path, split='test', class_names=['a', 'b', 'c'], labels=labels,
               results={'m': {'probabilities': probabilities}}, primary='m', images=_images)
  with Image.open(tmp_path / 'misclassified.png') as image:
    assert min(image.size) > 100


def test_mistakes_are_ordered_by_confidence():
  labels = np.array([0, 0, 1, 1])
  probabilities = np.array([[0.4, 0.6], [0.9, 0.1], [0.95, 0.05], [0.3, 0.7]])
  np.testing.assert_array_equal(most_confident_mistakes(labels, probabilities, 5), [2, 0])
