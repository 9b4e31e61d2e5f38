"""What Mixup/CutMix cost in the train step: step time with and without, same model and batch.

    python benchmarks/bench_mixup.py                       # the default config's model, batch 128
    python benchmarks/bench_mixup.py --model=resnet18 --width=64 --image_size=224 --batch_size=256

The variants run interleaved, round after round (so a machine that slows
down slows all alike); prints the median step time of each, its overhead
over plain training, and the extra FLOPs of the compiled step (XLA's count:
exact, where timings on a shared machine are noisy).
"""

import statistics
import time

import jax
import numpy as np
from absl import app, flags

from jaxcls.config import default_config
from jaxcls.training.metrics import eval_metrics_class
from jaxcls.data.mixing import Mixup
from jaxcls.models import create_model
from jaxcls.training.optim import create_optimizer, learning_rate_schedule
from jaxcls.training.steps import StepSpec, create_train_state, jit_steps

_MODEL = flags.DEFINE_string('model', None, 'Model (default: the default config\'s).')
_WIDTH = flags.DEFINE_integer('width', None, 'config.model.width (default: the default config\'s).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 32, 'Side of the square input.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timed rounds (each variant once per round).')
_STEPS = flags.DEFINE_integer('steps_per_round', 5, 'Steps per timing.')

VARIANTS = {
    'plain': None,
    'mixup (batch)': Mixup(mixup_alpha=0.2, cutmix_alpha=0.0),
    'cutmix (batch)': Mixup(mixup_alpha=0.0, cutmix_alpha=1.0),
    'mixup+cutmix (elem)': Mixup(mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.5, mode='elem'),
}


def main(argv):
  del argv
  config = default_config()
  name = _MODEL.value or config.model.name
  width = config.model.width if _WIDTH.value is None else _WIDTH.value
  rng = np.random.default_rng(0)
  size, batch_size = _IMAGE_SIZE.value, _BATCH_SIZE.value
  batch = jax.device_put(dict(
      image=rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
      label=rng.integers(0, 10, (batch_size,), dtype=np.int32)))
  runs = {}
  for variant, mixup in VARIANTS.items():
    lr = learning_rate_schedule(config.optimizer, steps_per_epoch=100, num_epochs=1)
    tx = create_optimizer(config.optimizer, lr)
    graph, eval_graph, state = create_train_state(
        create_model(name, 10, **({'width': width} if width else {})), tx, 0)
    train_fn, _ = jit_steps(StepSpec(train_graph=graph, eval_graph=eval_graph, tx=tx,
                                     metrics_cls=eval_metrics_class(10), mean=(0.5,) * 3,
                                     std=(0.25,) * 3, mixup=mixup))
    cost = train_fn.lower(state, batch).compile().cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost)['flops']
    state, _ = train_fn(state, batch)  # Compile and warm up.
    jax.block_until_ready(state)
    runs[variant] = dict(fn=train_fn, state=state, times=[], flops=flops)
  for _ in range(_ROUNDS.value):
    for run in runs.values():
      started = time.perf_counter()
      for _ in range(_STEPS.value):
        run['state'], _ = run['fn'](run['state'], batch)
      jax.block_until_ready(run['state'])
      run['times'].append((time.perf_counter() - started) / _STEPS.value)
  plain = statistics.median(runs['plain']['times'])
  print(f'{jax.devices()[0].device_kind}: {name} width {width}, {size}x{size}, batch {batch_size}')
  # XLA's FLOP count is exact where the timings of a busy machine are not.
  print(f'  {"variant":<22} {"step ms":>9} {"spread":>8} {"overhead":>9} {"FLOPs +":>8}')
  for variant, run in runs.items():
    median = statistics.median(run['times'])
    spread = (max(run['times']) - min(run['times'])) / 2
    print(f'  {variant:<22} {median * 1e3:9.1f} {spread * 1e3:8.1f} '
          f'{(median / plain - 1) * 100:8.1f}% '
          f'{(run["flops"] / runs["plain"]["flops"] - 1) * 100:7.2f}%')


if __name__ == '__main__':
  app.run(main)
