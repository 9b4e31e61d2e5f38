"""Every registered architecture trains: one jitted train step of a narrow variant on CPU."""

import jax
import numpy as np
import pytest

from jaxcls.training.metrics import eval_metrics_class
from jaxcls.models import create_model, list_models
from jaxcls.training.optim import create_optimizer, learning_rate_schedule
from jaxcls.training.steps import StepSpec, create_train_state, jit_steps


def _narrow(name):
  """config.model.width narrows every family (ConvNeXt: dims 8, 16, 32, 64)."""
  return dict(width=8 if name.startswith('convnext') else 4)


# One member per definition and block type: the others differ only in depths and widths,
# which their parity and parameter-count tests build (CI time: each is a compile).
ARCHITECTURES = [n for n in list_models() if n in (
    'cifar_resnet20', 'resnet18', 'resnet50', 'vgg11', 'vgg11_bn', 'convnext_tiny',
    'efficientnet_b0', 'efficientnet_lite0', 'mobilenet_v2')]


@pytest.mark.slow
@pytest.mark.parametrize('name', ARCHITECTURES)
def test_one_train_step_changes_the_parameters(name, config):
  config.optimizer.warmup_epochs = 0
  model = create_model(name, 10, **_narrow(name))
  lr = learning_rate_schedule(config.optimizer, steps_per_epoch=10, num_epochs=1)
  tx = create_optimizer(config.optimizer, lr)
  train_graph, eval_graph, state = create_train_state(model, tx, seed=0)
  before = jax.device_get(state.params)
  train_fn, _ = jit_steps(StepSpec(train_graph=train_graph, eval_graph=eval_graph, tx=tx,
                                   metrics_cls=eval_metrics_class(10), mean=(0.5,) * 3,
                                   std=(0.25,) * 3))
  rng = np.random.default_rng(0)
  batch = dict(image=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
               label=rng.integers(0, 10, (4,), dtype=np.int32))
  state, metrics = train_fn(state, batch)
  assert np.isfinite(metrics.compute()['loss'])
  after = jax.tree.leaves(jax.device_get(state.params))
  assert all(np.isfinite(a).all() for a in after)
  # Exact comparison, and 80%: ConvNeXt's layer scales (1e-6) make the first updates inside a
  # block vanish below float32 resolution,
  # and biases right before a BatchNorm get gradients that are zero up to rounding.
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), after)]
  assert sum(changed) > 0.8 * len(changed), f'{sum(changed)} of {len(changed)} changed'
