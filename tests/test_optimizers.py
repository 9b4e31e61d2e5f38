"""Gradient clipping and the optimizers beyond SGD/AdamW, with fine-tuning's groups."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxcls.config import ConfigError, validate
from jaxcls.models import create_model
from jaxcls.training import finetune, losses, optim
from jaxcls.training.metrics import eval_metrics_class
from jaxcls.training.optim import create_optimizer, learning_rate_schedule
from jaxcls.training.steps import StepSpec, create_train_state, jit_steps, normalize

import jitted

MEAN, STD = (0.5,) * 3, (0.25,) * 3
NEW_OPTIMIZERS = {'lamb': 1e-2, 'lion': 1e-3, 'rmsprop': 1e-3}  # name: a learning rate that fits.


def _phase(config, loss_scale=1.0, learning_rate_fn=None):
  """(model, state, phase, train step, eval step) of a partial fine-tuning (stage3 and the
  head train), the optimizer built as the trainer builds it."""
  config.finetune.strategy = 'partial'
  config.finetune.trainable_groups = 1
  model = create_model('cifar_resnet20', 10, width=4)
  plan = finetune.plan_from_config(config.finetune, finetune.group_names(model), 3)
  labels = finetune.param_labels(model, nnx.state(model, nnx.Param))
  lr = learning_rate_fn or learning_rate_schedule(config.optimizer, 10, 3)
  optimizer = lambda t: create_optimizer(config.optimizer, lr, labels, t, plan.lr_multipliers)  # noqa: E731
  train_graph, eval_graph, state = create_train_state(model, optimizer(plan.trainable_at(0)), 0)
  state, phase = finetune.enter_phase(state, plan.trainable_at(0), plan=plan,
                                      group_patterns=model.group_patterns,
                                      train_graph=train_graph, optimizer=optimizer)
  train_fn, eval_fn = jit_steps(StepSpec(
      train_graph=phase.graphdef, eval_graph=eval_graph, tx=phase.tx,
      metrics_cls=eval_metrics_class(10), mean=MEAN, std=STD,
      loss_fn=lambda logits, targets: loss_scale * losses.cross_entropy(logits, targets),
      trainable=phase.trainable))
  return model, state, phase, train_fn, eval_fn


def _exploding_step(config):
  """(trainable params before, their gradient by hand, their update by the step, frozen params
  before and after) of one step on a loss scaled by 1e6."""
  config.optimizer.update(dict(name='sgd', momentum=0.0, weight_decay=0.0))
  _, state, phase, train_fn, _ = _phase(config, loss_scale=1e6,
                                        learning_rate_fn=optax.constant_schedule(0.1))
  batch = jitted.random_batch()
  trainable, frozen = nnx.split_state(state.params, phase.trainable, ...)
  trainable, frozen = jax.device_get((trainable, frozen))

  def loss_of(trainable):  # The step's loss, written out.
    model = nnx.merge(phase.graphdef, trainable, frozen, state.model_state, copy=True)
    logits = model(normalize(batch['image'], MEAN, STD, jnp.float32))
    return 1e6 * losses.cross_entropy(logits, jax.nn.one_hot(batch['label'], 10)).mean()

  grads = jax.grad(loss_of)(trainable)
  new_state, _ = train_fn(state, batch)
  new_trainable, new_frozen = nnx.split_state(new_state.params, phase.trainable, ...)
  update = jax.tree.map(jnp.subtract, new_trainable, trainable)
  return trainable, grads, update, frozen, new_frozen


def test_clip_grad_norm_scales_an_exploding_gradient_to_the_configured_norm(config):
  config.optimizer.clip_grad_norm = 2.0
  _, grads, update, frozen, new_frozen = _exploding_step(config)
  norm = float(optax.global_norm(grads))
  assert norm > 1e3  # Exploding: clipping is what keeps the update small.
  # SGD at learning rate 0.1 without momentum or decay: the update is -0.1 * clipped gradient.
  np.testing.assert_allclose(float(optax.global_norm(update)), 0.1 * 2.0, rtol=1e-4)
  jax.tree.map(lambda u, g: np.testing.assert_allclose(u, -0.1 * g * 2.0 / norm, rtol=1e-3,
                                                       atol=1e-7), update, grads)
  jax.tree.map(np.testing.assert_array_equal, frozen, jax.device_get(new_frozen))


def test_adaptive_clip_bounds_each_units_gradient_by_its_weights_norm(config):
  config.optimizer.adaptive_clip = 0.01
  params, grads, update, frozen, new_frozen = _exploding_step(config)
  clipped, _ = optax.adaptive_grad_clip(0.01).update(grads, optax.EmptyState(), params)
  assert float(optax.global_norm(clipped)) < 1e-3 * float(optax.global_norm(grads))
  jax.tree.map(lambda u, g: np.testing.assert_allclose(u, -0.1 * g, rtol=1e-3, atol=1e-7),
               update, clipped)
  jax.tree.map(np.testing.assert_array_equal, frozen, jax.device_get(new_frozen))


def test_clipping_leaves_the_optimizer_state_as_without_it(config):
  """Stateless clippers run inside the groups' transformation: a checkpoint made with
  clipping off restores with it on, and the other way round."""
  model = create_model('cifar_resnet20', 10, width=4)
  params = nnx.state(model, nnx.Param)
  labels = finetune.param_labels(model, params)
  schedule = optax.constant_schedule(1.0)
  plain = create_optimizer(config.optimizer, schedule, labels, ('stage3', 'head')).init(params)
  config.optimizer.update(dict(clip_grad_norm=1.0, adaptive_clip=0.01))
  clipped = create_optimizer(config.optimizer, schedule, labels, ('stage3', 'head')).init(params)
  assert jax.tree.structure(plain) == jax.tree.structure(clipped)


@pytest.mark.parametrize('name', sorted(NEW_OPTIMIZERS))
def test_new_optimizer_lowers_the_loss_and_leaves_frozen_groups_bit_identical(config, name):
  config.optimizer.update(dict(name=name, learning_rate=NEW_OPTIMIZERS[name], warmup_epochs=0.0,
                               schedule='constant'))
  model, state, _, train_fn, eval_fn = _phase(config)
  frozen_groups = ('stem', 'stage1', 'stage2')
  before = jax.device_get((state.params, state.model_state))
  batch = jitted.random_batch()
  first = eval_fn(state, batch).compute()['loss']
  for _ in range(15):
    state, _ = train_fn(state, batch)
  assert eval_fn(state, batch).compute()['loss'] < 0.9 * first
  for tree_before, tree_after in zip(before, jax.device_get((state.params, state.model_state))):
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(tree_before)[0],
                            jax.tree.leaves(tree_after)):
      if finetune.group_of(model, finetune.path_string(path)) in frozen_groups:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('name', sorted(NEW_OPTIMIZERS))
def test_new_optimizer_takes_group_multipliers_plateau_scale_and_kernel_only_decay(config, name):
  """Unjitted, on the model's parameter tree: a group's multiplier and the plateau scale
  multiply its update; with zero gradients only kernels move (weight decay)."""
  config.optimizer.update(dict(name=name, weight_decay=0.1))
  model = create_model('cifar_resnet20', 10, width=4)
  params = nnx.state(model, nnx.Param)
  labels = finetune.param_labels(model, params)
  trainable = ('stage3', 'head')

  def update(grads, multipliers, plateau_scale=1.0):
    tx = create_optimizer(config.optimizer, optax.constant_schedule(0.01), labels, trainable,
                          multipliers)
    opt_state = optim.set_plateau_scale(tx.init(params), plateau_scale)
    return _by_group(model, tx.update(grads, opt_state, params)[0])

  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
  base = update(grads, {})
  scaled = update(grads, {'stage3': 0.25}, plateau_scale=0.5)
  for group in trainable:
    factor = 0.5 * (0.25 if group == 'stage3' else 1.0)
    for a, b in zip(base[group], scaled[group]):
      np.testing.assert_allclose(b, factor * a, rtol=1e-5, atol=1e-9)
  assert all(not np.any(leaf) for g in ('stem', 'stage1', 'stage2') for leaf in base[g])
  tx = create_optimizer(config.optimizer, optax.constant_schedule(0.01), labels, trainable)
  decayed = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)[0]
  for path, leaf in jax.tree_util.tree_flatten_with_path(decayed)[0]:
    path = finetune.path_string(path)
    kernel_of_trainable = path.endswith('kernel') and finetune.group_of(model, path) in trainable
    assert bool(np.any(leaf)) == kernel_of_trainable, path


def _by_group(model, tree):
  groups = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    groups.setdefault(finetune.group_of(model, finetune.path_string(path)), []).append(
        np.asarray(leaf))
  return groups


def test_optimizer_fields_are_validated_by_name(config):
  config.optimizer.name = 'adagrad'
  config.optimizer.clip_grad_norm = -1.0
  config.optimizer.adaptive_clip = -0.1
  config.optimizer.rmsprop_decay = 1.0
  with pytest.raises(ConfigError) as error:
    validate(config)
  for message in ("config.optimizer.name='adagrad': expected 'sgd', 'adamw', 'lamb', 'lion' or "
                  "'rmsprop'", 'config.optimizer.clip_grad_norm=-1.0: must be >= 0',
                  'config.optimizer.adaptive_clip=-0.1: must be >= 0',
                  'config.optimizer.rmsprop_decay=1.0: must be in (0, 1)'):
    assert message in str(error.value)
