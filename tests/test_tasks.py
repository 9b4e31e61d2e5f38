"""Several labels per image: combined classes decoded into tasks, one head per task."""

import json

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from sklearn import datasets

from jaxcls.config import ConfigError
from jaxcls.training.metrics import eval_metrics_class
from jaxcls.models.heads import MultiTaskHead
from jaxcls.data.label_tasks import tasks_from_class_names

_CLASSES = ('no_female_young', 'no_male_old', 'yes_female_old', 'yes_male_young', 'yes_male_old')


def test_class_names_decode_into_per_task_indices():
  tasks = tasks_from_class_names(_CLASSES, ('mask', 'gender', 'age'), '_')
  assert tasks.values == (('no', 'yes'), ('female', 'male'), ('old', 'young'))
  assert tasks.sizes == (2, 2, 2)
  decoded = tasks.decode(np.array([0, 3, 4]))
  assert decoded['mask'].tolist() == [0, 1, 1]
  assert decoded['gender'].tolist() == [0, 1, 1]
  assert decoded['age'].tolist() == [1, 1, 0]
  assert tasks_from_class_names(_CLASSES, (), '_') is None


def test_a_class_name_with_the_wrong_number_of_parts_is_named():
  with pytest.raises(ConfigError, match="class 'yes_male' does not split into 3 values"):
    tasks_from_class_names(('no_female_young', 'yes_male'), ('mask', 'gender', 'age'), '_')


def test_multi_task_head_scores_each_combination_by_its_joint_log_probability():
  tasks = tasks_from_class_names(_CLASSES, ('mask', 'gender', 'age'), '_')
  head = MultiTaskHead(6, list(zip(tasks.names, tasks.sizes)), tasks.class_tasks, dtype='float32',
                       rngs=nnx.Rngs(0))
  features = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
  scores = np.asarray(head(features))
  assert scores.shape == (4, len(_CLASSES))
  task_log_probs = {k: np.asarray(jax.nn.log_softmax(v))
                    for k, v in head.task_logits(features).items()}
  for c in range(len(_CLASSES)):
    want = sum(task_log_probs[name][:, tasks.class_tasks[c, t]]
               for t, name in enumerate(tasks.names))
    np.testing.assert_allclose(scores[:, c], want, rtol=1e-5, atol=1e-6)


def _parity_size_folder(root):
  """scikit-learn's digits as a folder of PNGs whose classes combine two tasks."""
  digits = datasets.load_digits()
  for i, (image, digit) in enumerate(zip(digits.images, digits.target)):
    name = f'{"even" if digit % 2 == 0 else "odd"}_{"small" if digit < 5 else "large"}'
    (root / name).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(image * 255 / 16).astype(np.uint8)).save(root / name / f'{i}.png')
  return root


def test_a_combined_head_is_scored_per_task_from_its_class_scores():
  tasks = tasks_from_class_names(_CLASSES, ('mask', 'gender', 'age'), '_')
  labels = np.array([0, 1, 2, 3], np.int32)
  # Right; mask and gender wrong; mask and gender wrong; age wrong.
  predicted = np.array([0, 2, 1, 4])
  logits = np.eye(len(_CLASSES), dtype=np.float32)[predicted]
  computed = eval_metrics_class(len(_CLASSES), tasks).single_from_model_output(
      loss=np.zeros(4, np.float32), logits=logits, labels=labels, mask=np.ones(4, bool)).compute()
  assert float(computed['accuracy']) == 0.25
  assert float(computed['mask_accuracy']) == 0.5
  assert float(computed['gender_accuracy']) == 0.5
  assert float(computed['age_accuracy']) == 0.75


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['heads'])
def test_task_heads_train_and_report_each_task(tmp_path_factory, tiny_config, mode):
  from jaxcls.experiment import train_and_report  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.getbasetemp() / 'parity_size'
  if not root.exists():
    _parity_size_folder(root)
  config = tiny_config
  config.data.source = f'folder:{root}'
  config.tasks.names = ('parity', 'size')
  config.tasks.mode = mode
  config.tasks.loss_weights = (1.0, 0.5) if mode == "heads" else ()
  config.train.num_epochs, config.model.width = 5, 8
  config.optimizer.warmup_epochs = 1.0
  config.evaluate.report_at_end = True
  workdir = tmp_path_factory.mktemp(mode)
  results = train_and_report(config, str(workdir))
  assert results['tasks'] == dict(mode=mode, names=['parity', 'size'],
                                  values=[['even', 'odd'], ['large', 'small']])
  for task in ("parity", "size"):  # Two-way tasks: well above chance after five epochs.
    assert results['test'][f'{task}_accuracy'] > 0.7
    assert results['best_val'][f'{task}_accuracy'] > 0.7
  # A task is right whenever the combination is, so never less accurate than it.
  assert results['test']['parity_accuracy'] >= results['test']['accuracy'] - 1e-6
  assert results['class_names'] == ['even_large', 'even_small', 'odd_large', 'odd_small']
  # The report decodes the combined classes: one table and confusion matrix per task.
  report = json.loads((workdir / 'report' / 'classification_report.json').read_text())
  assert set(report['tasks']) == {'parity', 'size'}
  assert set(report['tasks']['parity']['per_class']) == {'even', 'odd'}
  assert report['tasks']['parity']['accuracy'] > 0.7
  assert (workdir / 'report' / 'confusion_matrix_size.png').stat().st_size > 0
  assert '## Task parity' in (workdir / 'report' / 'classification_report.md').read_text()
