"""One model interface (`jaxcls.models.interface`), and every feature on every family through it.

Each registered family appears once in `FAMILIES`, narrow and small: Grad-CAM,
every fine-tuning strategy and a train step run on each, so a family that
registers itself works everywhere or fails here, and a new family without an
entry fails `test_every_registered_family_is_covered`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcls.evaluation.gradcam import gradcam, last_stage_and_head
from jaxcls.models import create_model, list_models, register
from jaxcls.models.interface import Classifier, check_model
from jaxcls.models.registry import model_family
from jaxcls.training import finetune, losses
from jaxcls.training.metrics import eval_metrics_class
from jaxcls.training.optim import create_optimizer, learning_rate_schedule
from jaxcls.training.steps import StepSpec, create_train_state, jit_steps

import jitted

# name -> (constructor arguments of a narrow variant without dropout, input size). At 64
# px the CNNs' last stage is 2x2: a map, not a single position.
FAMILIES = {
    'resnet18': (dict(width=4), 64),
    'vgg11_bn': (dict(width=8, dropout_rate=0.0), 64),
    'convnext_tiny': (dict(width=8, depths=(1, 1, 1, 1)), 64),
    'efficientnet_lite0': (dict(width=8, drop_connect_rate=0.0, dropout_rate=0.0), 64),
    'mobilenet_v2': (dict(width=8, dropout_rate=0.0), 64),
    'googlenet': (dict(width=8, aux_logits=True, dropout_rate=0.0, aux_dropout_rate=0.0), 64),
    'vit_small_patch16': (dict(width=16, depth=2, img_size=32), 32),
}
STRATEGIES = {'full': {}, 'feature_extraction': {}, 'partial': dict(trainable_groups=1),
              'gradual': dict(unfreeze_every=1)}  # The head first.


def random_model(name, num_classes=10, seed=0, **kwargs):
  """`create_model`'s model with random weights drawn by numpy, in a fraction of the time.

  Eager initialisers compile once per parameter shape (GoogLeNet: 100+ shapes, a
  minute on 2 cores); the tests here need weights that are random, not the
  architecture's own initialisation: He-scaled kernels, BatchNorm and LayerNorm
  at identity, small embeddings.
  """
  model = nnx.eval_shape(lambda: create_model(name, num_classes, **kwargs))
  rng = np.random.default_rng(seed)
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Variable)):
    shape, leaf = variable.shape, path[-1]
    if leaf == 'kernel':
      value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif leaf in ('scale', 'var'):
      value = np.ones(shape)
    elif leaf in ('bias', 'mean'):
      value = rng.standard_normal(shape) * 0.01
    else:
      value = rng.standard_normal(shape) * 0.02
    variable.set_value(jnp.asarray(value, variable.dtype))
  return model


@functools.cache
def _model(name):
  kwargs, _ = FAMILIES[name]
  model = random_model(name, **kwargs)
  model.eval()
  return model


def test_every_registered_family_is_covered():
  registered = {model_family(name) for name in list_models()}
  assert registered == {model_family(name) for name in FAMILIES}


def test_a_family_that_does_not_implement_the_interface_is_refused_at_registration():

  class NoSplit(Classifier):  # No last_stage, no group_patterns, no head_name.

    def features(self, x):
      return x.mean(axis=(1, 2))

  with pytest.raises(TypeError, match='does not define last_stage.*group_patterns.*head_name'):
    register('no_split_model')(NoSplit)
  with pytest.raises(TypeError, match='not a jaxcls.models.interface.Classifier'):
    register('plain_module')(lambda **kwargs: nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
  assert 'no_split_model' not in list_models()


@pytest.mark.parametrize('name', FAMILIES)
def test_the_model_states_its_interface_and_its_groups_cover_every_parameter(name):
  model = _model(name)
  check_model(model)
  groups = finetune.group_names(model)
  labels = jax.tree.leaves(finetune.param_labels(model, nnx.state(model, nnx.Param)))
  assert set(labels) == set(groups)
  size = FAMILIES[name][1]
  images = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  assert nnx.jit(lambda m, x: m.features(x))(model, images).shape == (2, model.num_features)


@pytest.mark.parametrize('name', FAMILIES)
def test_grad_cam_splits_the_model_without_changing_it_and_gives_maps(name):
  model, size = _model(name), FAMILIES[name][1]
  images = jax.random.normal(jax.random.key(1), (2, size, size, 3))

  @nnx.jit
  def split_then_head(model, images):
    activations, head = last_stage_and_head(model, images)
    return activations, head(activations), model(images)

  activations, logits, direct = split_then_head(model, images)
  assert activations.ndim == 4 and activations.shape[1] * activations.shape[2] > 1
  np.testing.assert_allclose(logits, direct, rtol=1e-5, atol=1e-5)
  cams, predicted = gradcam(model, images)
  assert cams.shape == images.shape[:3] and predicted.shape == (2,)
  assert np.isfinite(np.asarray(cams)).all() and float(cams.max()) <= 1.0
  assert float(cams.max()) > 0.0  # Some evidence somewhere: the gradient reached the stage.


def _strategy_step(model, name, strategy, config):
  """(plan, params before, params after) of one train step under `strategy`."""
  config.finetune.strategy = strategy
  for field, value in STRATEGIES[strategy].items():
    config.finetune[field] = value
  plan = finetune.plan_from_config(config.finetune, finetune.group_names(model), 3,
                                   model.tied_groups)
  labels = finetune.param_labels(model, nnx.state(model, nnx.Param))
  lr = learning_rate_schedule(config.optimizer, steps_per_epoch=10, num_epochs=3)
  optimizer = lambda t: create_optimizer(config.optimizer, lr, labels, t,  # noqa: E731
                                         plan.lr_multipliers)
  train_graph, eval_graph, state = create_train_state(model, optimizer(plan.trainable_at(0)), 0)
  model.eval()  # create_train_state leaves it in eval mode too; the cached model is shared.
  state, phase = finetune.enter_phase(state, plan.trainable_at(0), plan=plan,
                                      group_patterns=model.group_patterns,
                                      train_graph=train_graph, optimizer=optimizer)
  train_fn, _ = jit_steps(StepSpec(
      train_graph=phase.graphdef, eval_graph=eval_graph, tx=phase.tx,
      metrics_cls=eval_metrics_class(10), mean=(0.5,) * 3, std=(0.25,) * 3,
      trainable=phase.trainable))
  state = jax.tree.map(jnp.array, state)  # Copies: the step donates, the model is shared.
  before = jax.device_get(state.params)
  state, metrics = train_fn(state, jitted.random_batch(n=4, size=FAMILIES[name][1]))
  assert np.isfinite(metrics.compute()['loss'])
  return plan, before, jax.device_get(state.params)


@pytest.mark.slow
@pytest.mark.parametrize('name', FAMILIES)
def test_every_strategy_trains_exactly_its_groups(name, config):
  config.optimizer.warmup_epochs = 0
  model = _model(name)
  for strategy in STRATEGIES:
    plan, before, after = _strategy_step(model, name, strategy, config)
    changed = {}
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(before)[0],
                            jax.tree.leaves(after)):
      group = finetune.group_of(model, finetune.path_string(path))
      changed[group] = changed.get(group, False) or not np.array_equal(a, b)
    trained = {g for g, c in changed.items() if c}
    assert trained == set(plan.trainable_at(0)), strategy


def test_googlenet_aux_heads_train_with_inception4_and_never_alone():
  groups = ('stem', 'inception3', 'inception4', 'aux', 'inception5', 'head')
  tied = {'aux': 'inception4'}
  from jaxcls.config import default_config  # pylint: disable=g-import-not-at-top
  finetune_config = default_config().finetune

  def plan(**fields):
    for field, value in fields.items():
      finetune_config[field] = value
    return finetune.plan_from_config(finetune_config, groups, 6, tied)

  assert plan(strategy='feature_extraction').trainable_at(0) == ('head',)
  assert plan(strategy='partial', trainable_groups=1).trainable_at(0) == ('inception5', 'head')
  assert plan(strategy='partial', trainable_groups=2).trainable_at(0) == (
      'inception4', 'aux', 'inception5', 'head')
  gradual = plan(strategy='gradual', trainable_groups=1, unfreeze_every=1)
  assert [gradual.trainable_at(e) for e in (1, 2)] == [
      ('inception5', 'head'), ('inception4', 'aux', 'inception5', 'head')]
  decayed = plan(strategy='full', unfreeze_every=0, layer_decay=0.5)
  assert decayed.lr_multipliers['aux'] == decayed.lr_multipliers['inception4'] == 0.25


def _googlenet_step(aux_weight):
  model = random_model('googlenet', 5, width=8, aux_logits=True, dropout_rate=0.0,
                       aux_dropout_rate=0.0, aux_weight=aux_weight)
  from jaxcls.config import default_config  # pylint: disable=g-import-not-at-top
  optimizer_config = default_config().optimizer
  tx = create_optimizer(optimizer_config, learning_rate_schedule(optimizer_config, 10, 1))
  train_graph, eval_graph, state = create_train_state(model, tx, seed=0)
  state = jax.tree.map(jnp.array, state)  # Copies: the step donates them.
  train_fn, eval_fn = jit_steps(StepSpec(
      train_graph=train_graph, eval_graph=eval_graph, tx=tx, metrics_cls=eval_metrics_class(5),
      mean=(0.5,) * 3, std=(0.25,) * 3))
  return train_graph, eval_graph, state, train_fn, eval_fn


@pytest.mark.slow
def test_googlenet_train_loss_adds_its_aux_heads_and_eval_ignores_them():
  batch = jitted.random_batch(n=6, size=64, num_classes=5, seed=3)
  train_graph, eval_graph, state, train_fn, eval_fn = _googlenet_step(0.3)
  images = (jnp.asarray(batch['image'], jnp.float32) / 255 - 0.5) / 0.25
  targets = jax.nn.one_hot(batch['label'], 5)
  ce = lambda logits: float(losses.cross_entropy(logits, targets).mean())  # noqa: E731

  train_model = nnx.merge(train_graph, state.params, state.model_state, copy=True)
  main, (aux1, aux2) = train_model.logits_and_aux(images)
  by_hand = ce(main) + 0.3 * (ce(aux1) + ce(aux2))
  assert ce(aux1) > 0 and ce(aux2) > 0

  eval_model = nnx.merge(eval_graph, state.params, state.model_state, copy=True)
  assert eval_model.logits_and_aux(images)[1] == ()  # Eval mode computes no aux heads.
  eval_by_hand = ce(eval_model(images))
  eval_loss = float(eval_fn(state, batch).compute()['loss'])

  _, metrics = train_fn(state, batch)
  np.testing.assert_allclose(float(metrics.compute()['loss']), by_hand, rtol=1e-5)
  np.testing.assert_allclose(eval_loss, eval_by_hand, rtol=1e-5)
