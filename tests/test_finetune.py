"""Fine-tuning strategies: parameter groups, freezing that saves compute, learning-rate groups."""

import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from jaxcls.training import finetune
from jaxcls.config import ConfigError, validate
from jaxcls.training.metrics import eval_metrics_class
from jaxcls.models import create_model, list_models, model_from_config
from jaxcls.models.heads import MLPHead, get_submodule, replace_head
from jaxcls.training.optim import create_optimizer, learning_rate_schedule
from jaxcls.training.steps import StepSpec, create_train_state, jit_steps

import jitted
from conftest import make_tiny


def _phase_steps(model, config, epoch=0):
  """(state, plan, labels, train step, eval step) for `config.finetune` at `epoch`, as the trainer builds them."""
  plan = finetune.plan_from_config(config.finetune, finetune.group_names(model),
                                   config.train.num_epochs)
  labels = finetune.param_labels(model, nnx.state(model, nnx.Param))
  lr = learning_rate_schedule(config.optimizer, steps_per_epoch=10, num_epochs=3)
  optimizer = lambda t: create_optimizer(config.optimizer, lr, labels, t, plan.lr_multipliers)  # noqa: E731
  train_graph, eval_graph, state = create_train_state(model, optimizer(plan.trainable_at(epoch)), 0)
  state, phase = finetune.enter_phase(state, plan.trainable_at(epoch), plan=plan,
                                      group_patterns=model.group_patterns,
                                      train_graph=train_graph, optimizer=optimizer)
  train_fn, eval_fn = jit_steps(StepSpec(
      train_graph=phase.graphdef, eval_graph=eval_graph, tx=phase.tx,
      metrics_cls=eval_metrics_class(10), mean=(0.5,) * 3, std=(0.25,) * 3,
      trainable=phase.trainable))
  return state, plan, labels, train_fn, eval_fn


def _by_group(model, tree):
  """{group: [leaves]} of a params or model-state tree."""
  groups = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # Dropout RNG state.
      leaf = jax.random.key_data(leaf)
    groups.setdefault(finetune.group_of(model, finetune.path_string(path)), []).append(
        np.asarray(leaf))
  return groups


def _batch_stats(model, state):
  return _by_group(model, nnx.filter_state(state.model_state, nnx.BatchStat))


def _changed(before, after):
  return {g: any(not np.array_equal(a, b) for a, b in zip(before[g], after[g])) for g in before}


# One of each family (its members share the definition).
_FAMILIES = ['cifar_resnet20', 'resnet18', 'resnet50', 'vgg11', 'vgg16_bn', 'convnext_tiny',
             'efficientnet_b0', 'efficientnet_lite0', 'mobilenet_v2']


@pytest.mark.parametrize('name', [n for n in _FAMILIES if n in list_models()])
def test_every_parameter_belongs_to_one_group_and_the_head_group_is_the_classifier(name):
  model = nnx.eval_shape(lambda: create_model(name, 7, width=8) if 'vgg' in name or 'resnet' in name
                         else create_model(name, 7))
  groups = finetune.group_names(model)
  assert groups[-1] == 'head' and len(set(groups)) == len(groups) > 2
  labels = jax.tree.leaves(finetune.param_labels(model, nnx.state(model, nnx.Param)))
  assert set(labels) == set(groups)  # Every group holds parameters; none is unlabelled.
  head = get_submodule(model, model.head_name)
  head_params = len(jax.tree.leaves(nnx.state(head, nnx.Param)))
  assert labels.count('head') >= head_params > 0
  # Groups run from input to output: the first parameters nnx finds in the
  # first group's modules are those of the stem (or first block).
  assert groups[0] in ('stem', 'block1')


@pytest.mark.parametrize('name,kwargs,size', [
    ('cifar_resnet20', dict(width=4), 16),
    ('vgg11_bn', dict(width=8), 32),
    ('convnext_tiny', dict(width=8, depths=(1, 1, 1, 1)), 32),
    ('mobilenet_v2', dict(width=8), 32),
])
def test_feature_extraction_changes_only_the_head(config, name, kwargs, size):
  config.finetune.strategy = 'feature_extraction'
  model = create_model(name, 10, **kwargs)
  state, *_, train_fn, _ = _phase_steps(model, config)
  params0, stats0 = _by_group(model, state.params), _batch_stats(model, state)
  for seed in range(2):
    state, _ = train_fn(state, jitted.random_batch(n=8, size=size, seed=seed))
  changed = _changed(params0, _by_group(model, state.params))
  assert changed == {g: g == 'head' for g in finetune.group_names(model)}
  # Frozen BatchNorm layers keep their running statistics bit for bit.
  assert not any(_changed(stats0, _batch_stats(model, state)).values())


def test_partial_trains_the_last_groups_and_the_head(config):
  config.finetune.strategy = 'partial'
  config.finetune.trainable_groups = 1
  model = create_model('cifar_resnet20', 10, width=4)
  state, *_, train_fn, _ = _phase_steps(model, config)
  params0, stats0 = _by_group(model, state.params), _batch_stats(model, state)
  for seed in range(2):
    state, _ = train_fn(state, jitted.random_batch(seed=seed))
  expected = {'stem': False, 'stage1': False, 'stage2': False, 'stage3': True, 'head': True}
  assert _changed(params0, _by_group(model, state.params)) == expected
  stats_changed = _changed(stats0, _batch_stats(model, state))
  assert stats_changed == {g: v for g, v in expected.items() if g != 'head'}


def test_frozen_batch_norm_normalises_with_running_statistics(config):
  """In a frozen group, training mode computes what inference mode computes."""
  config.finetune.strategy = 'feature_extraction'
  model = create_model('cifar_resnet20', 10, width=4)
  plan = finetune.plan_from_config(config.finetune, finetune.group_names(model), 3)
  model.train()
  graph, params, model_state = nnx.split(model, nnx.Param, ...)
  frozen_graph = finetune.phase_graphdef(graph, params, model_state, plan.frozen_at(0))
  images = jnp.asarray(np.random.default_rng(0).standard_normal((8, 16, 16, 3)), jnp.float32)
  frozen_features = nnx.merge(frozen_graph, params, model_state).features(images)
  model.eval()
  np.testing.assert_allclose(frozen_features, model.features(images), rtol=1e-6, atol=1e-6)
  model.train()  # And a training-mode BatchNorm would normalise by the batch instead.
  assert not np.allclose(model.features(images), frozen_features, atol=1e-3)


def _train_step_flops(config, strategy, name='cifar_resnet20', size=16, width=8):
  config.finetune.strategy = strategy
  model = create_model(name, 10, width=width)
  state, *_, train_fn, _ = _phase_steps(model, config)
  batch = jitted.random_batch(n=16, size=size)
  cost = train_fn.lower(state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return cost['flops']


def test_frozen_backbones_cost_no_backward_pass(config):
  """XLA's own count: without gradients into the backbone, a step is about one forward."""
  full = _train_step_flops(config, 'full')
  partial = _train_step_flops(config, 'partial')
  probe = _train_step_flops(config, 'feature_extraction')
  assert probe < 0.45 * full
  assert probe < partial < full


def test_learning_rate_multipliers_scale_each_group_update(config):
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 0.0
  config.finetune.lr_multipliers = 'stem:0.1 stage2:3'
  config.finetune.layer_decay = 0.5
  model = create_model('cifar_resnet20', 10, width=4)
  plan = finetune.plan_from_config(config.finetune, finetune.group_names(model), 3)
  assert plan.lr_multipliers == {'head': 1.0, 'stage3': 0.5, 'stage2': 0.75, 'stage1': 0.125,
                                 'stem': 0.00625}
  params = nnx.state(model, nnx.Param)
  labels = finetune.param_labels(model, params)
  tx = create_optimizer(config.optimizer, optax.constant_schedule(1.0), labels,
                        plan.trainable_at(0), plan.lr_multipliers)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  for group, leaves in _by_group(model, updates).items():
    for leaf in leaves:  # SGD at learning rate 1: the update is -multiplier * gradient.
      np.testing.assert_allclose(leaf, -plan.lr_multipliers[group], rtol=1e-6)


def test_an_unfreeze_keeps_the_moments_of_trained_groups_and_starts_new_ones_fresh(config):
  config.optimizer.name = 'adamw'
  config.finetune.strategy = 'gradual'
  config.finetune.unfreeze_schedule = '0:head 1:stage3'
  model = create_model('cifar_resnet20', 10, width=4)
  state, plan, labels, train_fn, _ = _phase_steps(model, config)
  for seed in range(2):
    state, _ = train_fn(state, jitted.random_batch(seed=seed))
  old_head = state.opt_state[0].inner_states['head']
  old_count = int(state.opt_state[1].count)
  lr = learning_rate_schedule(config.optimizer, steps_per_epoch=10, num_epochs=3)
  optimizer = lambda t: create_optimizer(config.optimizer, lr, labels, t, plan.lr_multipliers)  # noqa: E731
  first = finetune.Phase(finetune.Trainable(model.group_patterns, plan.trainable_at(0)),
                         optimizer(plan.trainable_at(0)), None)
  state, phase = finetune.enter_phase(state, plan.trainable_at(1), plan=plan,
                                      group_patterns=model.group_patterns,
                                      train_graph=nnx.graphdef(model), optimizer=optimizer,
                                      previous=first)
  assert phase.trainable.groups == ('stage3', 'head')
  jax.tree.map(np.testing.assert_array_equal, state.opt_state[0].inner_states['head'], old_head)
  assert int(state.opt_state[1].count) == old_count == 2  # The schedule goes on.
  adam = state.opt_state[0].inner_states['stage3'].inner_state[0]
  assert int(adam.count) == 0
  assert all(not np.any(m) for m in jax.tree.leaves(adam.mu) + jax.tree.leaves(adam.nu))


@pytest.mark.parametrize('name,kwargs', [('cifar_resnet20', {}), ('vgg11_bn', {}),
                                         ('convnext_tiny', dict(depths=(1, 1, 1, 1)))])
def test_mlp_head_sits_where_the_classifier_was(name, kwargs):
  model = create_model(name, 5, width=8, **kwargs)
  replace_head(model, MLPHead(model.num_features, 32, 5, dropout_rate=0.5, dtype='float32',
                              rngs=nnx.Rngs(0)))
  head = get_submodule(model, model.head_name)
  model.eval()
  images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
  np.testing.assert_allclose(model(images), head(model.features(images)), rtol=1e-5, atol=1e-6)
  labels = jax.tree.leaves(finetune.param_labels(model, nnx.state(model, nnx.Param)))
  assert labels.count('head') >= 4  # Both Dense layers are in the head group.


def test_config_builds_the_mlp_head_on_the_backbone(config):
  config.model.head, config.model.head_hidden = 'mlp', 32
  model = model_from_config(config.model, [str(i) for i in range(5)])
  assert isinstance(model.fc, MLPHead) and model.fc.hidden.in_features == model.num_features
  assert model.fc.out.out_features == 5 and model.fc.dropout.rate == config.model.head_dropout


@pytest.mark.parametrize('field,value,message', [
    ('strategy', 'linear_probe', 'expected one of'),
    ('trainable_groups', 9, 'this model has 4 such groups'),
    ('lr_multipliers', 'stage9:0.1', "unknown group 'stage9'"),
    ('lr_multipliers', 'stem=0.1', 'is not GROUP:MULTIPLIER'),
    ('unfreeze_schedule', '3:stage3', 'say what trains from epoch 0'),
    ('unfreeze_schedule', '0:head 2:layer4', "unknown group(s) ['layer4']"),
    ('layer_decay', 1.5, 'expected a factor in (0, 1]'),
])
def test_impossible_fine_tuning_is_refused_before_training(config, field, value, message):
  config.finetune.strategy = 'partial' if field == 'trainable_groups' else (
      'gradual' if field == 'unfreeze_schedule' else config.finetune.strategy)
  config.finetune[field] = value
  with pytest.raises(ConfigError, match=re.escape(f'config.finetune.{field}={value!r}')) as error:
    validate(config)
  assert message in str(error.value)


def test_unfreeze_every_n_epochs_adds_one_group_at_a_time(config):
  config.finetune.strategy = 'gradual'
  config.finetune.unfreeze_every = 2
  plan = finetune.plan_from_config(config.finetune, ('stem', 'stage1', 'stage2', 'head'), 5)
  assert [plan.trainable_at(e) for e in range(6)] == [
      ('head',), ('head',), ('stage2', 'head'), ('stage2', 'head'),
      ('stage1', 'stage2', 'head'), ('stage1', 'stage2', 'head')]


# --------------------------------------------------------------- the loop ---

def _gradual_config(config):
  config = make_tiny(config)
  config.finetune.strategy = 'gradual'
  config.finetune.unfreeze_schedule = '0:head 1:stage3 2:stage2'
  config.checkpoint.keep = 3
  return config


@pytest.fixture(scope='module')
def gradual_run(tmp_path_factory):
  from jaxcls.config import default_config  # pylint: disable=g-import-not-at-top
  from jaxcls.experiment import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config = _gradual_config(default_config())
  workdir = tmp_path_factory.mktemp('gradual')
  results = train_and_evaluate(config, str(workdir))
  return config, workdir, results


def _checkpoint(workdir, step):
  return ocp.StandardCheckpointer().restore(workdir / 'checkpoints' / str(step) / 'state')


@pytest.mark.slow
def test_gradual_groups_stay_frozen_exactly_until_their_epoch(gradual_run):
  config, workdir, results = gradual_run
  steps_per_epoch = results['history'][0]['step']
  model = model_from_config(config.model, results['class_names'], seed=config.seed,
                            pretrained=False)
  initial = _by_group(model, nnx.state(model, nnx.Param))
  saved = {}
  for epoch in (1, 2, 3):
    state = _checkpoint(workdir, epoch * steps_per_epoch)
    saved[epoch] = _changed(initial, _by_group(model, jax.tree.map(np.asarray, state['params'])))
  assert saved[1] == dict(stem=False, stage1=False, stage2=False, stage3=False, head=True)
  assert saved[2] == dict(stem=False, stage1=False, stage2=False, stage3=True, head=True)
  assert saved[3] == dict(stem=False, stage1=False, stage2=True, stage3=True, head=True)


@pytest.mark.slow
def test_a_run_resumed_mid_schedule_matches_an_uninterrupted_one(gradual_run, tmp_path):
  from jaxcls.experiment import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config, workdir, results = gradual_run
  steps_per_epoch = results['history'][0]['step']
  resumed = tmp_path / 'resumed'
  shutil.copytree(workdir, resumed)
  for step in (2 * steps_per_epoch, 3 * steps_per_epoch):  # Back to the end of epoch 1.
    shutil.rmtree(resumed / 'checkpoints' / str(step))
  (resumed / 'results.json').unlink()
  again = train_and_evaluate(config, str(resumed))
  assert [h['epoch'] for h in again['history']] == [1, 2, 3]
  for want, got in zip(results['history'], again['history']):
    np.testing.assert_allclose(got['val']['loss'], want['val']['loss'], rtol=1e-5)
  final = 3 * steps_per_epoch
  want = ocp.tree.to_flat_dict(_checkpoint(workdir, final)['params'])
  got = ocp.tree.to_flat_dict(_checkpoint(resumed, final)['params'])
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=str(key))
