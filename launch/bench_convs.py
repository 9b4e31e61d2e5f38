"""Where the time of a CPU train step goes: each convolution of ResNet-18, JAX against PyTorch.

    python launch/bench_convs.py                    # ResNet-18's convolutions at 32x32, batch 128
    python launch/bench_convs.py --image_size=224 --batch_size=32

`python -m jaxcls.bench` and launch/bench_torch.py time whole steps; this
times the convolutions alone, one shape at a time (forward, and forward plus
both gradients), in `jax.lax.conv_general_dilated` (NHWC, as jaxcls runs
them) and `torch.nn.functional.conv2d` (channels-last), interleaved round
after round. If the per-convolution ratio matches the whole step's, the gap
lies in the convolution kernels the two frameworks call, not in the step
around them.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from absl import app, flags

_IMAGE_SIZE = flags.DEFINE_integer('image_size', 32, 'Input side of the network.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 128, 'Batch size.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Interleaved timings; the median is reported.')


def resnet18_convs(size: int) -> list[tuple[int, int, int, int, int]]:
  """Distinct (input side, in channels, out channels, kernel, stride) of torchvision's ResNet-18."""
  convs, side = [(size, 3, 64, 7, 2)], size // 4  # Stem conv, then the max-pool.
  channels = 64
  for stage, width in enumerate((64, 128, 256, 512)):
    stride = 1 if stage == 0 else 2
    convs.append((side, channels, width, 3, stride))
    if stride == 2:
      convs.append((side, channels, width, 1, 2))
      side = -(-side // 2)
    convs.append((side, width, width, 3, 1))
    channels = width
  return list(dict.fromkeys(convs))


def _jax_fns(kernel: int, stride: int):
  pad = kernel // 2

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  forward = jax.jit(conv)
  backward = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))
  return forward, backward


def _seconds(fn) -> float:
  started = time.perf_counter()
  fn()
  return time.perf_counter() - started


def main(argv):
  del argv
  n = _BATCH_SIZE.value
  rng = np.random.default_rng(0)
  print(f'{jax.devices()[0].device_kind}, torch {torch.__version__} ({torch.get_num_threads()} '
        f'threads); batch {n}, ResNet-18 at {_IMAGE_SIZE.value}x{_IMAGE_SIZE.value}')
  print(f'{"side":>4} {"in":>4} {"out":>4} {"k":>2} {"s":>2} {"jax fwd ms":>11} '
        f'{"torch fwd ms":>12} {"ratio":>6} {"jax f+b ms":>11} {"torch f+b ms":>12} {"ratio":>6}')
  totals = np.zeros(4)
  for side, cin, cout, k, s in resnet18_convs(_IMAGE_SIZE.value):
    x = rng.standard_normal((n, side, side, cin), np.float32)
    w = rng.standard_normal((k, k, cin, cout), np.float32) * 0.1
    jx, jw = jnp.asarray(x), jnp.asarray(w)
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    tx.requires_grad_(True)
    tw.requires_grad_(True)
    forward, backward = _jax_fns(k, s)

    def torch_forward():
      with torch.no_grad():
        F.conv2d(tx, tw, stride=s, padding=k // 2)

    def torch_backward():
      (F.conv2d(tx, tw, stride=s, padding=k // 2) ** 2).sum().backward()

    fns = (lambda: jax.block_until_ready(forward(jx, jw)), torch_forward,
           lambda: jax.block_until_ready(backward(jx, jw)), torch_backward)
    for fn in fns:  # Warm-up and compilation.
      fn()
    times = [[] for _ in fns]
    for _ in range(_ROUNDS.value):
      for i, fn in enumerate(fns):
        times[i].append(_seconds(fn))
    medians = np.array([statistics.median(t) for t in times]) * 1e3
    totals += medians
    print(f'{side:4d} {cin:4d} {cout:4d} {k:2d} {s:2d} {medians[0]:11.2f} {medians[1]:12.2f} '
          f'{medians[0] / medians[1]:6.2f} {medians[2]:11.2f} {medians[3]:12.2f} '
          f'{medians[2] / medians[3]:6.2f}')
  print(f'{"all distinct convolutions":<18} {totals[0]:11.2f} {totals[1]:12.2f} '
        f'{totals[0] / totals[1]:6.2f} {totals[2]:11.2f} {totals[3]:12.2f} '
        f'{totals[2] / totals[3]:6.2f}')


if __name__ == '__main__':
  app.run(main)
