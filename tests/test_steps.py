"""The jitted steps: learning, weight-decay masking, schedules, and data parallelism."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import optax
from flax import nnx

from jaxcls.models import create_model
from jaxcls.training import optim
from jaxcls.training.optim import decay_mask, learning_rate_schedule

import jitted


_batch = jitted.random_batch


def test_the_plateau_scale_lives_in_the_optimizer_and_scales_its_update(config):
  """ReduceLROnPlateau's scale is a hyperparameter of the optimizer state: setting it scales
  the next update, the state reports the rate it applied, and the schedule keeps counting."""
  config.optimizer.update(dict(momentum=0.0, weight_decay=0.0))
  params = {'w': jnp.ones(3)}
  grads = {'w': jnp.ones(3)}
  tx = optim.create_optimizer(config.optimizer, lambda count: 0.5 / (1.0 + count))
  updates, state = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], -0.5)
  assert float(optim.learning_rate(state)) == 0.5
  state = optim.set_plateau_scale(state, 0.1)
  updates, state = tx.update(grads, state, params)
  np.testing.assert_allclose(updates['w'], -0.5 / 2 * 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(optim.learning_rate(state)), 0.025, rtol=1e-6)
  assert optim.plateau_scale(state) == pytest.approx(0.1)


def _steps(config, num_classes=10):
  return jitted.steps_for(create_model('cifar_resnet20', num_classes, width=4), config.optimizer,
                          num_classes)


def test_train_steps_fit_a_fixed_batch(config):
  config.optimizer.warmup_epochs = 0
  config.optimizer.schedule = 'constant'
  config.optimizer.learning_rate = 0.05
  state, train_fn, eval_fn = _steps(config)
  batch = _batch()
  first_loss = eval_fn(state, batch).compute()['loss']
  for _ in range(30):
    state, _ = train_fn(state, batch)
  result = eval_fn(state, batch).compute()
  assert int(state.step) == 30
  assert result['loss'] < 0.5 * first_loss
  assert result['accuracy'] > 0.8


def test_eval_mask_excludes_padding(config):
  state, _, eval_fn = _steps(config)
  batch = _batch(16)
  padded = {k: np.concatenate([v, v[:4]]) for k, v in batch.items()}
  padded['mask'][16:] = False
  padded['label'][16:] = (padded['label'][16:] + 1) % 10  # Wrong labels on the padding.
  full = eval_fn(state, batch).compute()
  masked = eval_fn(state, padded).compute()
  np.testing.assert_allclose(masked['loss'], full['loss'], rtol=1e-5)
  np.testing.assert_allclose(masked['accuracy'], full['accuracy'])


def test_weight_decay_skips_biases_and_norm_parameters():
  model = create_model('cifar_resnet20', 10, width=4)
  mask = decay_mask(nnx.state(model, nnx.Param))
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert all(v for k, v in flat.items() if k.endswith("['kernel']"))
  assert not any(v for k, v in flat.items() if k.endswith(("['bias']", "['scale']")))


def test_schedules_warm_up_then_decay(config):
  config.optimizer.warmup_epochs = 1
  cosine = learning_rate_schedule(config.optimizer, steps_per_epoch=10, num_epochs=5)
  assert float(cosine(0)) == 0.0
  np.testing.assert_allclose(float(cosine(10)), config.optimizer.learning_rate, rtol=1e-6)
  assert float(cosine(50)) < 1e-6
  config.optimizer.schedule = 'step'
  config.optimizer.decay_epochs = (2, 4)
  step = learning_rate_schedule(config.optimizer, steps_per_epoch=10, num_epochs=5)
  np.testing.assert_allclose([float(step(s)) for s in (15, 25, 45)],
                             [0.1, 0.01, 0.001], rtol=1e-5)


def test_adamw_optimizer_trains(config):
  config.optimizer.name = 'adamw'
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_epochs = 0
  state, train_fn, eval_fn = _steps(config)
  batch = _batch()
  first = eval_fn(state, batch).compute()['loss']
  for _ in range(20):
    state, _ = train_fn(state, batch)
  assert eval_fn(state, batch).compute()['loss'] < first


_DATA_PARALLEL_SCRIPT = textwrap.dedent('''
    import jax, numpy as np
    from jaxcls.training import parallel
    from jaxcls.config import default_config
    from jaxcls.training.metrics import eval_metrics_class
    from jaxcls.models import create_model
    from jaxcls.training.optim import create_optimizer, learning_rate_schedule
    from jaxcls.training.losses import make_loss_fn
    from jaxcls.training.steps import StepSpec, create_train_state, jit_steps

    assert jax.device_count() == 4, jax.devices()
    config = default_config()
    config.optimizer.warmup_epochs = 0.0  # A non-zero update from the first step.
    lr = learning_rate_schedule(config.optimizer, steps_per_epoch=10, num_epochs=3)
    rng = np.random.default_rng(0)
    batch = dict(image=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
                 label=rng.integers(0, 10, (16,), dtype=np.int32))

    model = create_model('cifar_resnet20', 10, width=4)
    tx = create_optimizer(config.optimizer, lr)
    train_graph, eval_graph, initial = create_train_state(model, tx, seed=0)
    train_fn, _ = jit_steps(StepSpec(
        train_graph=train_graph, eval_graph=eval_graph, tx=tx,
        metrics_cls=eval_metrics_class(10), mean=(0.5,) * 3, std=(0.25,) * 3,
        loss_fn=make_loss_fn('cross_entropy', label_smoothing=0.1)))

    def one_step(devices, state):
      mesh = parallel.data_mesh(devices)
      state = jax.device_put(state, parallel.replicated(mesh))
      state, metrics = train_fn(state, parallel.to_device(batch, parallel.batch_sharded(mesh)))
      return jax.device_get(state), metrics.compute()

    # Each step starts both meshes from the same state (the second from the one-device
    # state after the first, momentum and BatchNorm statistics included): two steps in a
    # row would compare float rounding amplified by this tiny network, not the step.
    state = initial = jax.device_get(initial)  # Host copies: the step donates its input.
    for _ in range(2):
      one_state, one_metrics = one_step(jax.devices()[:1], state)
      four_state, four_metrics = one_step(jax.devices(), state)
      np.testing.assert_allclose(four_metrics['loss'], one_metrics['loss'], rtol=1e-5)
      for a, b in zip(jax.tree.leaves(one_state), jax.tree.leaves(four_state)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
      state = one_state
    moved = max(float(np.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(one_state.params),
        jax.tree.leaves(initial.params)))
    assert moved > 1e-3, moved
    print('OK', one_metrics['loss'], four_metrics['loss'])
''')


def test_four_devices_compute_the_same_step_as_one():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', _DATA_PARALLEL_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith('OK')
