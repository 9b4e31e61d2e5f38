"""Gradient accumulation: k micro-batches in one jitted step, one optimizer update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxcls.config import ConfigError, validate
from jaxcls.data.mixing import Mixup
from jaxcls.models import create_model
from jaxcls.training import finetune, losses
from jaxcls.training.metrics import eval_metrics_class
from jaxcls.training.optim import create_optimizer
from jaxcls.training.steps import StepSpec, create_train_state, jit_steps, normalize

import jitted

MEAN, STD = (0.5,) * 3, (0.25,) * 3
K, BATCH = 4, 32


def _sgd(config):
  """Plain SGD at a constant rate: the update is -0.1 times the gradient."""
  config.optimizer.update(dict(name='sgd', momentum=0.0, weight_decay=0.0))
  return create_optimizer(config.optimizer, optax.constant_schedule(0.1))


def _one_step(config, grad_accum_steps, *, batch_norm_frozen, mixup=None, strategy='full'):
  """(state before, state after) of one step of a ResNet-20 on a fixed batch."""
  model = create_model('cifar_resnet20', 10, width=4)
  spec_args = {}
  if strategy == 'full':
    tx = _sgd(config)
    train_graph, eval_graph, state = create_train_state(model, tx, seed=0)
  else:
    config.finetune.strategy = strategy
    _sgd(config)
    plan = finetune.plan_from_config(config.finetune, finetune.group_names(model), 3)
    labels = finetune.param_labels(model, nnx.state(model, nnx.Param))
    optimizer = lambda t: create_optimizer(config.optimizer, optax.constant_schedule(0.1),  # noqa: E731
                                           labels, t)
    train_graph, eval_graph, state = create_train_state(model, optimizer(plan.trainable_at(0)), 0)
    state, phase = finetune.enter_phase(state, plan.trainable_at(0), plan=plan,
                                        group_patterns=model.group_patterns,
                                        train_graph=train_graph, optimizer=optimizer)
    tx, train_graph, spec_args = phase.tx, phase.graphdef, dict(trainable=phase.trainable)
  # BatchNorm on its running statistics everywhere: train with the inference graph.
  graph = eval_graph if batch_norm_frozen and strategy == 'full' else train_graph
  train_fn, _ = jit_steps(StepSpec(
      train_graph=graph, eval_graph=eval_graph, tx=tx, metrics_cls=eval_metrics_class(10),
      mean=MEAN, std=STD, mixup=mixup, grad_accum_steps=grad_accum_steps, **spec_args))
  before = jax.device_get(state)
  after, metrics = train_fn(state, jitted.random_batch(n=BATCH))
  return before, jax.device_get(after), metrics.compute()


def _assert_same_update(before, one, accumulated, rtol=1e-5):
  scale = max(float(np.abs(np.asarray(b) - np.asarray(a)).max())
              for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(one.params)))
  assert scale > 1e-4  # The step moved the parameters.
  for a, b, c in zip(jax.tree.leaves(before.params), jax.tree.leaves(one.params),
                     jax.tree.leaves(accumulated.params)):
    np.testing.assert_allclose(np.asarray(c) - np.asarray(a), np.asarray(b) - np.asarray(a),
                               rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize('case', ['eval_mode_batch_norm_with_mixup', 'feature_extraction'])
def test_k_micro_batches_make_the_update_of_one_batch_k_times_larger(config, case):
  """BatchNorm frozen, each example's loss depends on itself alone: accumulating the k
  micro-batches' mean gradients is the whole batch's gradient, up to summation order. The
  Mixup draws are the whole batch's (mixing happens before the batch is dealt out)."""
  kwargs = (dict(mixup=Mixup(mixup_alpha=0.4, cutmix_alpha=1.0, mode='elem'))
            if case.startswith('eval_mode') else dict(strategy='feature_extraction'))
  before, one, one_metrics = _one_step(config, 1, batch_norm_frozen=True, **kwargs)
  _, accumulated, metrics = _one_step(config, K, batch_norm_frozen=True, **kwargs)
  _assert_same_update(before, one, accumulated)
  np.testing.assert_allclose(metrics['loss'], one_metrics['loss'], rtol=1e-5)
  jax.tree.map(np.testing.assert_array_equal, accumulated.model_state, before.model_state)
  assert int(accumulated.step) == int(one.step) == 1


def test_training_mode_batch_norm_runs_the_micro_batches_one_after_the_other(config):
  """BatchNorm in training mode: each micro-batch is normalised by its own statistics and
  updates the running averages in turn; the update is the mean of the micro-batches'
  gradients, computed here by hand. Micro-batch j holds the examples j, j + K, ... of the
  first half and their Mixup partners B-1-i."""
  before, _, _ = _one_step(config, 1, batch_norm_frozen=False)
  _, accumulated, metrics = _one_step(config, K, batch_norm_frozen=False)
  model = create_model('cifar_resnet20', 10, width=4)
  model.train()
  graph = nnx.graphdef(model)
  batch = jitted.random_batch(n=BATCH)
  images = normalize(batch['image'], MEAN, STD, jnp.float32)
  params, model_state = jax.tree.map(jnp.asarray, (before.params, before.model_state))
  grad_sum, loss_sum = None, 0.0
  first_half = np.arange(BATCH // 2)
  for j in range(K):
    micro = np.concatenate([first_half[j::K], (BATCH - 1 - first_half[j::K])[::-1]])

    def loss_of(params, model_state=model_state, micro=micro):
      model = nnx.merge(graph, params, model_state, copy=True)
      logits = model(images[micro])
      loss = losses.cross_entropy(logits, jax.nn.one_hot(batch['label'][micro], 10)).mean()
      return loss, nnx.split(model, nnx.Param, ...)[2]

    (loss, model_state), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    grad_sum = grads if grad_sum is None else jax.tree.map(jnp.add, grad_sum, grads)
    loss_sum += float(loss)
  expected = jax.tree.map(lambda p, g: p - 0.1 * g / K, before.params, grad_sum)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               accumulated.params, expected)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               accumulated.model_state, model_state)
  np.testing.assert_allclose(metrics['loss'], loss_sum / K, rtol=1e-5)


def test_grad_accum_steps_must_divide_the_batch(config):
  config.train.batch_size = 64
  config.train.grad_accum_steps = 3
  with pytest.raises(ConfigError, match=r'config.train.grad_accum_steps=3: batch_size=64 must '
                                        r'divide into grad_accum_steps micro-batches'):
    validate(config)
  config.train.grad_accum_steps = 64  # Micro-batches of one: Mixup pairs two examples.
  with pytest.raises(ConfigError, match=r'config.train.grad_accum_steps=64: .* an even size'):
    validate(config)
  config.train.grad_accum_steps = 0
  with pytest.raises(ConfigError, match=r'config.train.grad_accum_steps=0: must be >= 1'):
    validate(config)
