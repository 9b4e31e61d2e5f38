"""EfficientNet-B0's depthwise convolutions and its BatchNorm + SiLU, alone, on this machine.

    python benchmarks/bench_depthwise.py                 # batch 16, 224px's maps, 3 rounds
    python benchmarks/bench_depthwise.py --batch_size=8 --rounds=5

Per depthwise layer (six of B0's shapes at 224px), the best of `--rounds` timings of
forward and forward+backward (a sum-of-squares loss) for jaxcls's shifted sum
(`conv.depthwise_as_shifted_sum`, compiled with `conv.compiler_options()` as the train step
is), XLA's own depthwise convolution, and PyTorch's (channels-last, eager). Then BatchNorm
+ SiLU in training mode, forward+backward, with jaxcls's BatchNorm (`models/batchnorm.py`)
against `nnx.BatchNorm`. Whole steps: benchmarks/bench_train_step.py and bench_torch.py.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import app, flags
from flax import nnx
from jax import lax

from jaxcls.models import conv
from jaxcls.models.batchnorm import BatchNorm

_BATCH = flags.DEFINE_integer('batch_size', 16, 'Batch size.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timings per figure; the best is printed.')

# (height = width, channels, kernel, stride) of B0's depthwise layers at 224px.
LAYERS = ((112, 96, 3, 2), (112, 32, 3, 1), (56, 144, 3, 1), (56, 144, 5, 2), (28, 240, 5, 1),
          (14, 672, 5, 1))


def best_ms(fn, *args) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(_ROUNDS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times) * 1e3


def jax_row(size, channels, kernel, stride) -> list[float]:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(_BATCH.value, size, size, channels)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 1, channels)) * 0.1, jnp.float32)
  pads = ((kernel // 2, kernel // 2),) * 2
  shifted = lambda x, w: conv.depthwise_as_shifted_sum(x, w, (stride, stride), pads)  # noqa: E731
  xla = lambda x, w: lax.conv_general_dilated(  # noqa: E731
      x, w, (stride, stride), pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=channels)
  row = []
  for fn in (shifted, xla):
    grads = jax.grad(lambda x, w, fn=fn: jnp.sum(jnp.square(fn(x, w))), argnums=(0, 1))
    row += [best_ms(jax.jit(fn, compiler_options=conv.compiler_options()), x, w),
            best_ms(jax.jit(grads, compiler_options=conv.compiler_options()), x, w)]
  return row


def torch_row(size, channels, kernel, stride) -> list[float]:
  x = torch.randn(_BATCH.value, channels, size, size).contiguous(
      memory_format=torch.channels_last).requires_grad_()
  layer = torch.nn.Conv2d(channels, channels, kernel, stride, kernel // 2, groups=channels,
                          bias=False).to(memory_format=torch.channels_last)

  def forward():
    with torch.no_grad():
      return layer(x)

  def backward():
    layer(x).square().sum().backward()

  row = []
  for fn in (forward, backward):
    fn()
    times = []
    for _ in range(_ROUNDS.value):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    row.append(min(times) * 1e3)
  return row


def batchnorm_ms(module_cls, shape) -> float:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(1.0, 2.0, shape), jnp.float32)
  target = jnp.asarray(rng.normal(size=shape), jnp.float32)
  bn = module_cls(shape[-1], momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
  graph, state = nnx.split(bn)

  def loss(state, x):
    y, _ = graph.apply(state)(x, use_running_average=False)
    return jnp.sum(jax.nn.silu(y) * target)

  return best_ms(jax.jit(jax.grad(loss, argnums=(0, 1)),
                         compiler_options=conv.compiler_options()), state, x)


def main(_):
  torch.set_num_threads(max(1, torch.get_num_threads()))
  print(f'batch {_BATCH.value}, best of {_ROUNDS.value}, ms; jax {jax.__version__}, '
        f'torch {torch.__version__} ({torch.get_num_threads()} threads)')
  print(f'{"depthwise layer":<22} {"shifted fwd":>11} {"fwd+bwd":>8} {"xla fwd":>8} '
        f'{"fwd+bwd":>8} {"torch fwd":>9} {"fwd+bwd":>8}')
  totals = np.zeros(6)
  for size, channels, kernel, stride in LAYERS:
    row = np.array(jax_row(size, channels, kernel, stride)
                   + torch_row(size, channels, kernel, stride))
    totals += row
    name = f'{size}x{size}x{channels} {kernel}x{kernel}/{stride}'
    print(f'{name:<22} ' + ' '.join(f'{v:>{w}.1f}' for v, w in zip(row, (11, 8, 8, 8, 9, 8))),
          flush=True)
  print(f'{"all":<22} ' + ' '.join(f'{v:>{w}.1f}' for v, w in zip(totals, (11, 8, 8, 8, 9, 8))))
  print(f'\n{"BatchNorm + SiLU, fwd+bwd":<28} {"jaxcls":>8} {"nnx":>8}')
  for size, channels in ((112, 96), (56, 144), (56, 256)):
    shape = (_BATCH.value, size, size, channels)
    print(f'{str(shape):<28} {batchnorm_ms(BatchNorm, shape):>8.1f} '
          f'{batchnorm_ms(nnx.BatchNorm, shape):>8.1f}', flush=True)


if __name__ == '__main__':
  app.run(main)
