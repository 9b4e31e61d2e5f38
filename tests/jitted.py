"""Shared by the tests that run the real jitted steps on a model: state, steps and a batch."""

import numpy as np

from jaxcls.training.metrics import eval_metrics_class
from jaxcls.training.optim import create_optimizer, learning_rate_schedule
from jaxcls.training.losses import make_loss_fn
from jaxcls.training.steps import StepSpec, create_train_state, jit_steps


def steps_for(model, optimizer_config, num_classes=10, label_smoothing=0.0):
  """-> (train state, jitted train step, jitted eval step) as the trainer builds them."""
  lr = learning_rate_schedule(optimizer_config, steps_per_epoch=10, num_epochs=3)
  tx = create_optimizer(optimizer_config, lr)
  train_graph, eval_graph, state = create_train_state(model, tx, seed=0)
  train_fn, eval_fn = jit_steps(StepSpec(
      train_graph=train_graph, eval_graph=eval_graph, tx=tx,
      metrics_cls=eval_metrics_class(num_classes), mean=(0.5,) * 3, std=(0.25,) * 3,
      loss_fn=make_loss_fn('cross_entropy', label_smoothing=label_smoothing)))
  return state, train_fn, eval_fn


def random_batch(n=32, size=16, num_classes=10, seed=0):
  rng = np.random.default_rng(seed)
  return dict(image=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
              label=rng.integers(0, num_classes, (n,), dtype=np.int32),
              mask=np.ones((n,), bool))
