"""Where the time of a CPU train step goes: each convolution of a ResNet, JAX against PyTorch.

    python benchmarks/bench_convs.py                    # ResNet-18's convolutions at 32x32, batch 128
    python benchmarks/bench_convs.py --model=cifar_resnet20
    python benchmarks/bench_convs.py --image_size=224 --batch_size=32

`python benchmarks/bench_train_step.py` and benchmarks/bench_torch.py time whole steps; this
times the convolutions alone, one shape at a time (forward, and forward plus
both gradients), in `jax.lax.conv_general_dilated` (NHWC: model.conv_lowering
'xla'), in jaxcls's 'auto' lowering (`jaxcls.models.conv`: a patch matmul
where XLA:CPU's convolution is slow, marked *) and in
`torch.nn.functional.conv2d` (channels-last), interleaved round after round.
If the per-convolution ratios match the whole step's, the gap lies in the
convolution kernels the frameworks call, not in the step around them.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from absl import app, flags

from jaxcls.models.conv import auto_conv_general_dilated

_MODEL = flags.DEFINE_enum('model', 'resnet18', ['resnet18', 'cifar_resnet20'],
                           'Whose convolutions (torchvision ResNet-18 or He et al.\'s ResNet-20).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 32, 'Input side of the network.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 128, 'Batch size.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Interleaved timings; the median is reported.')


def resnet_convs(model: str, size: int) -> list[tuple[int, int, int, int, int]]:
  """Distinct (input side, in channels, out channels, kernel, stride) of torchvision's ResNet-18
  or of the CIFAR ResNet-20 (3x3 stem, 16-32-64 channels, 1x1 projection shortcuts)."""
  if model == 'resnet18':
    stem, side, widths = (size, 3, 64, 7, 2), size // 4, (64, 128, 256, 512)  # Stem, max-pool.
  else:
    stem, side, widths = (size, 3, 16, 3, 1), size, (16, 32, 64)
  convs, channels = [stem], stem[2]
  for stage, width in enumerate(widths):
    stride = 1 if stage == 0 else 2
    convs.append((side, channels, width, 3, stride))
    if stride == 2:
      convs.append((side, channels, width, 1, 2))
      side = -(-side // 2)
    convs.append((side, width, width, 3, 1))
    channels = width
  return list(dict.fromkeys(convs))


def _jax_fns(kernel: int, stride: int, conv_fn):
  pad = kernel // 2

  def conv(x, w):
    return conv_fn(x, w, (stride, stride), [(pad, pad)] * 2,
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
  shapes = resnet_convs(_MODEL.value, _IMAGE_SIZE.value)
  print(f'{jax.devices()[0].device_kind}, torch {torch.__version__} ({torch.get_num_threads()} '
        f'threads); batch {n}, {_MODEL.value} at {_IMAGE_SIZE.value}x{_IMAGE_SIZE.value}; ms, '
        f'median of {_ROUNDS.value}; * = auto lowers to a patch matmul')
  print(f'{"side":>4} {"in":>4} {"out":>4} {"k":>2} {"s":>2}  | {"forward: xla":>12} {"auto":>7} '
        f'{"torch":>7} {"xla/t":>6} {"auto/t":>6} | {"fwd+bwd: xla":>12} {"auto":>7} '
        f'{"torch":>7} {"xla/t":>6} {"auto/t":>6}')
  totals = np.zeros(6)
  for side, cin, cout, k, s in shapes:
    x = rng.standard_normal((n, side, side, cin), np.float32)
    w = rng.standard_normal((k, k, cin, cout), np.float32) * 0.1
    jx, jw = jnp.asarray(x), jnp.asarray(w)
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    tx.requires_grad_(True)
    tw.requires_grad_(True)
    xla_forward, xla_backward = _jax_fns(k, s, jax.lax.conv_general_dilated)
    auto_forward, auto_backward = _jax_fns(k, s, auto_conv_general_dilated)
    patched = 'conv_general_dilated' not in str(jax.make_jaxpr(auto_forward)(jx, jw))

    def torch_forward():
      with torch.no_grad():
        F.conv2d(tx, tw, stride=s, padding=k // 2)

    def torch_backward():
      (F.conv2d(tx, tw, stride=s, padding=k // 2) ** 2).sum().backward()

    fns = [lambda f=f: jax.block_until_ready(f(jx, jw))
           for f in (xla_forward, auto_forward)] + [torch_forward]
    fns += [lambda f=f: jax.block_until_ready(f(jx, jw))
            for f in (xla_backward, auto_backward)] + [torch_backward]
    for fn in fns:  # Warm-up and compilation.
      fn()
    times = [[] for _ in fns]
    for _ in range(_ROUNDS.value):
      for i, fn in enumerate(fns):
        times[i].append(_seconds(fn))
    medians = np.array([statistics.median(t) for t in times]) * 1e3
    totals += medians
    print(f'{side:4d} {cin:4d} {cout:4d} {k:2d} {s:2d} {"*" if patched else " "}| {_cells(medians)}',
          flush=True)
  print(f'{"all distinct convs":<20}| {_cells(totals)}')


def _cells(ms: np.ndarray) -> str:
  """xla, auto, torch, xla/torch, auto/torch for the forward, then for forward+backward."""
  return ' | '.join(f'{ms[i]:12.2f} {ms[i + 1]:7.2f} {ms[i + 2]:7.2f} {ms[i] / ms[i + 2]:6.2f} '
                    f'{ms[i + 1] / ms[i + 2]:6.2f}' for i in (0, 3))


if __name__ == '__main__':
  app.run(main)
