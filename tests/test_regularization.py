"""Regularisation wired into the trainer: augmentation, Mixup/CutMix, losses, plateau, stopping.

The building blocks have their own tests (test_augment, test_mixing, test_losses,
test_plateau); these check that the train step and the loop use them: the step
with mixing trains and names its accuracy, the configured loss is the one the
step differentiates, and one tiny real run (shared by the slow tests, resumed
half-way) lowers its learning rate on a plateau, stops early, tests the best
checkpoint and shows its first batch.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from jaxcls import data
from jaxcls.config import ConfigError, resolve_automatic_fields, validate
from jaxcls.training.losses import make_loss_fn
from jaxcls.training.metrics import NONFINITE, SKIPPED, eval_metrics_class, train_metrics_class
from jaxcls.data.mixing import Mixup
from jaxcls.models import create_model, model_from_config
from jaxcls.training.optim import create_optimizer, learning_rate_schedule
from jaxcls.training.steps import StepSpec, create_train_state, jit_steps, normalize
from jaxcls.data.label_tasks import tasks_from_class_names

import jitted


def _steps(config, model, num_classes=10, **kwargs):
  lr = learning_rate_schedule(config.optimizer, steps_per_epoch=10, num_epochs=3)
  tx = create_optimizer(config.optimizer, lr)
  train_graph, eval_graph, state = create_train_state(model, tx, seed=0)
  train_fn, eval_fn = jit_steps(StepSpec(
      train_graph=train_graph, eval_graph=eval_graph, tx=tx,
      metrics_cls=eval_metrics_class(num_classes), mean=(0.5,) * 3, std=(0.25,) * 3, **kwargs))
  return train_graph, state, train_fn, eval_fn


def _constant_lr(config, learning_rate=0.05, weight_decay=5e-4):
  config.optimizer.update(dict(warmup_epochs=0.0, schedule='constant',
                               learning_rate=learning_rate, weight_decay=weight_decay))
  return config


def test_step_with_mixup_and_cutmix_fits_a_fixed_batch_and_names_its_accuracy(config):
  _, state, train_fn, eval_fn = _steps(
      _constant_lr(config), create_model('cifar_resnet20', 10, width=4),
      mixup=Mixup(mixup_alpha=0.4, cutmix_alpha=1.0, switch_prob=0.5, mode='elem'))
  batch = jitted.random_batch(n=16)
  first_loss = eval_fn(state, batch).compute()['loss']
  for _ in range(20):
    state, metrics = train_fn(state, batch)
  summary = metrics.compute()
  assert set(summary) == {'loss', 'accuracy_vs_dominant_label', 'learning_rate', NONFINITE,
                          SKIPPED}
  assert eval_fn(state, batch).compute()['loss'] < 0.7 * first_loss


def test_train_accuracies_are_named_for_the_dominant_label_only_under_mixing():
  tasks = tasks_from_class_names(['a_x', 'a_y', 'b_x'], ('letter', 'mark'), '_')
  plain = train_metrics_class(tasks)
  mixed = train_metrics_class(tasks, mixing=True)
  assert set(plain.__annotations__) == {'loss', 'accuracy', 'learning_rate', 'letter_accuracy',
                                        'mark_accuracy', NONFINITE, SKIPPED}
  assert set(mixed.__annotations__) == {
      'loss', 'accuracy_vs_dominant_label', 'learning_rate', NONFINITE, SKIPPED,
      'letter_accuracy_vs_dominant_label', 'mark_accuracy_vs_dominant_label'}


def test_per_task_heads_train_on_mixed_targets(config):
  class_names = [f'{p}_{s}' for p in ('even', 'odd') for s in ('large', 'small')]
  tasks = tasks_from_class_names(class_names, ('parity', 'size'), '_')
  config.model.width = 4
  model = model_from_config(config.model, class_names, tasks)
  _, state, train_fn, _ = _steps(
      _constant_lr(config), model, num_classes=4, mixup=Mixup(mixup_alpha=1.0, cutmix_alpha=1.0),
      task_loss_weights=(1.0, 0.5), train_metrics_cls=train_metrics_class(tasks, mixing=True))
  batch = jitted.random_batch(n=8, num_classes=4)
  losses = []
  for _ in range(8):
    state, metrics = train_fn(state, batch)
    losses.append(float(metrics.compute()['loss']))
  assert np.isfinite(losses).all()
  assert 'parity_accuracy_vs_dominant_label' in metrics.compute()


def test_configured_loss_is_the_one_the_step_differentiates(config):
  """Focal loss with class 0 weighted 0: class-0 examples give zero loss and zero gradient."""
  weights = np.ones(10, np.float32)
  weights[0] = 0.0
  loss_fn = make_loss_fn('focal', focal_gamma=2.0, class_weights=weights)
  model = create_model('cifar_resnet20', 10, width=4)
  train_graph, state, train_fn, _ = _steps(_constant_lr(config, weight_decay=0.0), model,
                                           loss_fn=loss_fn)
  batch = jitted.random_batch(n=8)

  params = jax.device_get(state.params)
  state, metrics = train_fn(state, dict(batch, label=np.zeros_like(batch['label'])))
  assert float(metrics.compute()['loss']) == 0.0
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(jax.device_get(state.params))):
    np.testing.assert_array_equal(a, b)

  # On other classes, the step reports exactly the configured loss of its train-mode logits.
  model = nnx.merge(train_graph, state.params, state.model_state, copy=True)
  logits = model(normalize(batch['image'], (0.5,) * 3, (0.25,) * 3, jnp.float32))
  expected = loss_fn(logits, jax.nn.one_hot(batch['label'], 10)).mean()
  state, metrics = train_fn(state, batch)
  np.testing.assert_allclose(metrics.compute()['loss'], expected, rtol=1e-5)
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(params), jax.tree.leaves(jax.device_get(state.params))))


def test_regularisation_fields_are_validated_by_name(config):
  config.mixup.prob = 1.5
  config.mixup.off_epoch = -1
  config.loss.class_weights = 'sqrt'
  config.plateau.factor = 1.0
  config.early_stopping.metric = 'f1'
  with pytest.raises(ConfigError) as error:
    validate(config)
  for message in ('config.mixup.prob=1.5: must be a probability',
                  'config.mixup.off_epoch=-1: must be >= 0',
                  "config.loss.class_weights='sqrt': expected 'none' or one of",
                  'config.plateau.factor=1.0: must be in (0, 1)',
                  "config.early_stopping.metric='f1': expected a validation metric"):
    assert message in str(error.value)


# ------------------------------------------------------------- one tiny run ---

PLATEAU_EPOCHS, STOP_EPOCH, MAX_EPOCHS = 2, 4, 6
EPOCH_EXAMPLES, BATCH = 1024, 128


def _run_config(tiny_config):
  """A run whose plateau and stopping are forced: no epoch after the first can improve."""
  c = _constant_lr(tiny_config, learning_rate=0.1)
  c.data.epoch_examples = EPOCH_EXAMPLES  # 8 steps per epoch instead of 11.
  c.data.augment.erasing_prob = 1.0
  c.data.augment.erasing_value = 1.0  # White boxes on the digits' black.
  c.mixup.mixup_alpha, c.mixup.cutmix_alpha = 0.4, 1.0
  c.train.label_smoothing = 0.1
  c.plateau.update(dict(enabled=True, metric='accuracy', mode='max', patience=1, factor=0.1,
                        threshold=1.0, threshold_mode='abs'))
  c.early_stopping.update(dict(patience=3, min_delta=1.0, metric='accuracy', mode='max'))
  # The "best" checkpoint is the least accurate epoch: an early one that only the best,
  # not the last, checkpoint can explain.
  c.checkpoint.best_mode = 'min'
  return c


@pytest.fixture(scope='module')
def resumed_run(tmp_path_factory):
  """A run stopped after epoch 2 and rerun to at most 6 epochs in the same workdir."""
  from conftest import make_tiny  # pylint: disable=g-import-not-at-top
  from jaxcls.config import default_config  # pylint: disable=g-import-not-at-top
  from jaxcls.experiment import train_and_evaluate  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('regularized')
  config = _run_config(make_tiny(default_config()))
  config.train.num_epochs = PLATEAU_EPOCHS
  train_and_evaluate(config, str(workdir))
  written = (workdir / 'first_batch.png').stat().st_mtime_ns
  config.train.num_epochs = MAX_EPOCHS  # Training longer is a change the workdir must allow.
  results = train_and_evaluate(config, str(workdir), allow_config_change=True)
  return dict(workdir=workdir, config=config, results=results, first_batch_mtime=written)


@pytest.mark.slow
def test_epoch_length_follows_data_epoch_examples(resumed_run):
  steps = EPOCH_EXAMPLES // BATCH
  assert [h['step'] for h in resumed_run['results']['history']] == [
      steps * e for e in range(1, STOP_EPOCH + 1)]


@pytest.mark.slow
def test_plateau_lowers_the_learning_rate_after_patience_epochs_across_a_resume(resumed_run):
  history = resumed_run['results']['history']
  # Epoch 1 sets the best; each later epoch is one bad epoch (patience 1), so the
  # scale drops after epochs 2, 3, 4 and the learning rate of epoch e + 1 with it.
  # Epochs 3-4 ran after the resume: the state's scale and the plateau's counters
  # both came back from the checkpoint.
  np.testing.assert_allclose([h['train']['learning_rate'] for h in history],
                             [0.1, 0.1, 0.01, 0.001], rtol=1e-5)
  assert [h['lr_scale'] for h in history] == pytest.approx([1.0, 0.1, 0.01, 0.001])
  assert resumed_run['results']['plateau']['scale'] == pytest.approx(0.001)


@pytest.mark.slow
def test_early_stopping_stops_before_num_epochs_and_results_say_so(resumed_run):
  results = resumed_run['results']
  assert results['stopped_early_at_epoch'] == STOP_EPOCH < MAX_EPOCHS
  assert len(results['history']) == STOP_EPOCH
  saved = json.loads((resumed_run['workdir'] / 'results.json').read_text())
  assert saved['stopped_early_at_epoch'] == STOP_EPOCH


@pytest.mark.slow
def test_the_test_split_is_evaluated_at_the_best_checkpoint_not_the_last(resumed_run):
  results = resumed_run['results']
  val_accuracy = [h['val']['accuracy'] for h in results['history']]
  best = int(np.argmin(val_accuracy))  # checkpoint.best_mode='min' in this run.
  assert results['best_epoch'] == best + 1 != len(val_accuracy)
  assert results['best_val'] == results['history'][best]['val']
  # The test accuracy is that of the best (poor) checkpoint, far from the last one's.
  assert abs(results['test']['accuracy'] - val_accuracy[best]) < abs(
      results['test']['accuracy'] - val_accuracy[-1])


@pytest.mark.slow
def test_train_accuracy_under_mixing_is_against_the_dominant_label(resumed_run):
  for entry in resumed_run['results']['history']:
    assert 'accuracy_vs_dominant_label' in entry['train']
    assert 'accuracy' not in entry['train']
    assert 'accuracy' in entry['val']


@pytest.mark.slow
def test_first_batch_is_written_once_after_augmentation_and_mixing(resumed_run):
  from jaxcls.training.preview import image_grid  # pylint: disable=g-import-not-at-top
  workdir, config = resumed_run['workdir'], resolve_automatic_fields(resumed_run['config'])
  png = workdir / 'first_batch.png'
  assert png.stat().st_mtime_ns == resumed_run['first_batch_mtime']  # Not again on resume.
  shown = np.asarray(Image.open(png).convert('RGB'))
  dataset = data.load_dataset(config.data, str(workdir))
  raw = next(iter(data.train_batches(dataset.train, config.data, global_batch_size=BATCH,
                                     seed=config.seed, epoch=0, start_step=0)))['image']
  plain = image_grid(np.asarray(raw))
  assert shown.shape == plain.shape
  # Erasing (a white box in every image) and mixing changed the images a lot.
  assert np.abs(shown.astype(int) - plain).mean() > 10
  events = b''.join(p.read_bytes() for p in Path(workdir).glob('events.out.tfevents.*'))
  assert b'train/first_batch' in events




def test_mixup_off_epoch_trains_the_last_epochs_unmixed_also_after_a_resume(
    tiny_config, tmp_path, monkeypatch):
  """The loop re-jits the step without Mixup/CutMix at `mixup.off_epoch`; a run resumed
  after it starts unmixed. The train metrics keep their names throughout."""
  from jaxcls.experiment import train_and_evaluate  # pylint: disable=g-import-not-at-top
  from jaxcls.training import loop  # pylint: disable=g-import-not-at-top
  specs = []

  def recording(spec):
    specs.append(spec)
    return jit_steps(spec)

  monkeypatch.setattr(loop, 'jit_steps', recording)
  config = _constant_lr(tiny_config)
  config.data.epoch_examples, config.train.batch_size = 256, 128  # Two steps per epoch.
  config.mixup.mixup_alpha, config.mixup.off_epoch = 0.4, 1
  config.train.num_epochs = 2
  results = train_and_evaluate(config, str(tmp_path))
  assert [spec.mixup for spec in specs] == [loop.mixing.from_config(config.mixup), None]
  assert all('accuracy_vs_dominant_label' in h['train'] for h in results['history'])
  specs.clear()
  config.train.num_epochs = 3
  train_and_evaluate(config, str(tmp_path), allow_config_change=True)
  assert [spec.mixup for spec in specs] == [None]
