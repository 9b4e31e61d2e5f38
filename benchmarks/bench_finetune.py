"""Step time of each fine-tuning strategy relative to full fine-tuning, same model and batch.

    python benchmarks/bench_finetune.py                      # ResNet-18 and -50, 64x64, batch 16 (CPU)
    python benchmarks/bench_finetune.py --image_size=224 --batch_size=128 --dtype=bfloat16   # GPU

Prints, per model and strategy: median train-step time (compilation and
warm-up excluded), its spread, images/s, XLA's FLOP count of the step, and
both as a fraction of 'full'. The strategies run interleaved, round after
round, so a machine that slows down mid-run slows all of them alike.
"""

import json
import statistics
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from jaxcls.training import finetune, parallel
from jaxcls.config import default_config
from jaxcls.training.metrics import eval_metrics_class
from jaxcls.models import create_model
from jaxcls.models.registry import accepts
from jaxcls.training.optim import create_optimizer, learning_rate_schedule
from jaxcls.training.steps import StepSpec, create_train_state, jit_steps

_MODELS = flags.DEFINE_list('models', ['resnet18', 'resnet50'], 'Models to compare.')
_STRATEGIES = flags.DEFINE_list('strategies', ['full', 'partial', 'feature_extraction'],
                                'config.finetune.strategy values; the first is the reference.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 64, 'Side of the square input.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Global batch size.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timed rounds (one step of each strategy per round).')
_STEPS = flags.DEFINE_integer('steps_per_round', 3, 'Steps timed together per measurement.')
_JSON = flags.DEFINE_string('json', None, 'Also write the figures to this JSON file.')


def _strategy_step(name: str, strategy: str, batch):
  config = default_config()
  config.finetune.strategy = strategy
  size = {'img_size': _IMAGE_SIZE.value} if accepts(name, 'img_size') else {}  # ViTs.
  model = create_model(name, 1000, dtype=_DTYPE.value, **size)
  plan = finetune.plan_from_config(config.finetune, finetune.group_names(model), 1)
  labels = finetune.param_labels(model, nnx.state(model, nnx.Param))
  lr = learning_rate_schedule(config.optimizer, steps_per_epoch=100, num_epochs=1)
  optimizer = lambda t: create_optimizer(config.optimizer, lr, labels, t)  # noqa: E731
  train_graph, eval_graph, state = create_train_state(model, optimizer(plan.trainable_at(0)), 0)
  state, phase = finetune.enter_phase(state, plan.trainable_at(0), plan=plan,
                                      group_patterns=model.group_patterns,
                                      train_graph=train_graph, optimizer=optimizer)
  mesh = parallel.data_mesh()
  state = jax.device_put(state, parallel.replicated(mesh))
  train_fn, _ = jit_steps(StepSpec(
      train_graph=phase.graphdef, eval_graph=eval_graph, tx=phase.tx,
      metrics_cls=eval_metrics_class(1000), mean=(0.5,) * 3, std=(0.25,) * 3,
      dtype=_DTYPE.value, trainable=phase.trainable))
  batch = jax.device_put(batch, parallel.batch_sharded(mesh))
  compiled = train_fn.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  flops = (cost[0] if isinstance(cost, list) else cost).get('flops', float('nan'))
  state, _ = train_fn(state, batch)  # Warm-up.
  jax.block_until_ready(state)
  return dict(fn=train_fn, state=state, batch=batch, flops=flops, times=[])


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  size, batch_size = _IMAGE_SIZE.value, _BATCH_SIZE.value
  batch = dict(image=rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
               label=rng.integers(0, 1000, (batch_size,), dtype=np.int32))
  print(f'devices: {jax.device_count()} x {jax.devices()[0].device_kind}; '
        f'{size}x{size}, batch {batch_size}, {_DTYPE.value}')
  results = []
  for name in _MODELS.value:
    runs = {s: _strategy_step(name, s, batch) for s in _STRATEGIES.value}
    for _ in range(_ROUNDS.value):
      for run in runs.values():
        started = time.perf_counter()
        for _ in range(_STEPS.value):
          run['state'], _ = run['fn'](run['state'], run['batch'])
        jax.block_until_ready(run['state'])
        run['times'].append((time.perf_counter() - started) / _STEPS.value)
    reference = runs[_STRATEGIES.value[0]]
    ref_time = statistics.median(reference['times'])
    print(f'\n{name}')
    print(f'  {"strategy":<20} {"step ms":>9} {"spread":>8} {"img/s":>8} {"GFLOP":>8} '
          f'{"time/full":>10} {"flops/full":>10}')
    for strategy, run in runs.items():
      median = statistics.median(run['times'])
      spread = (max(run['times']) - min(run['times'])) / 2
      row = dict(model=name, strategy=strategy, step_seconds=median, spread_seconds=spread,
                 images_per_second=batch_size / median, flops=run['flops'],
                 time_vs_full=median / ref_time, flops_vs_full=run['flops'] / reference['flops'],
                 image_size=size, batch_size=batch_size, dtype=_DTYPE.value,
                 device=jax.devices()[0].device_kind, device_count=jax.device_count())
      results.append(row)
      print(f'  {strategy:<20} {median * 1e3:9.1f} {spread * 1e3:8.1f} '
            f'{row["images_per_second"]:8.1f} {run["flops"] / 1e9:8.2f} '
            f'{row["time_vs_full"]:10.2f} {row["flops_vs_full"]:10.2f}', flush=True)
    if _JSON.value:  # After every model: a run stopped midway keeps what it measured.
      with open(_JSON.value, 'w') as f:
        json.dump(results, f, indent=2)


if __name__ == '__main__':
  app.run(main)
