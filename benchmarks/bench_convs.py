"""Where the time of a CPU train step goes: each convolution of a ResNet, JAX against PyTorch.

    python benchmarks/bench_convs.py                    # ResNet-18's convolutions at 32x32, batch 128
    python benchmarks/bench_convs.py --model=cifar_resnet20
    python benchmarks/bench_convs.py --image_size=224 --batch_size=16

`python benchmarks/bench_train_step.py` and benchmarks/bench_torch.py time whole steps; this
times the convolutions alone, one shape at a time (forward, and forward plus
both gradients), in `jax.lax.conv_general_dilated` (NHWC: model.conv_lowering
'xla') compiled with XLA's default options ("xla+ynn": YNNPACK's kernels) and with
the trainer's (`jaxcls.models.conv.compiler_options`: XLA's own), in jaxcls's
'auto' lowering (`jaxcls.models.conv`: a patch matmul where XLA:CPU's convolution
is slow, marked *) and in `torch.nn.functional.conv2d` (channels-last),
interleaved round after round; then ResNet's 3x3/2 max pool, with either option set. If
the per-convolution ratios match the whole step's, the gap lies in the kernels the
frameworks call, not in the step around them.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from absl import app, flags

from flax import nnx

from jaxcls.models.conv import auto_conv_general_dilated, compiler_options

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


def _jax_fns(kernel: int, stride: int, conv_fn, options):
  pad = kernel // 2

  def conv(x, w):
    return conv_fn(x, w, (stride, stride), [(pad, pad)] * 2,
                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  forward = jax.jit(conv, compiler_options=options)
  backward = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)),
                     compiler_options=options)
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
  options = compiler_options()
  variants = (('xla+ynn', jax.lax.conv_general_dilated, None),
              ('xla', jax.lax.conv_general_dilated, options),
              ('auto', auto_conv_general_dilated, options))
  print(f'{jax.devices()[0].device_kind}, torch {torch.__version__} ({torch.get_num_threads()} '
        f'threads); batch {n}, {_MODEL.value} at {_IMAGE_SIZE.value}x{_IMAGE_SIZE.value}; ms, '
        f'median of {_ROUNDS.value}; * = auto lowers to a patch matmul; /t = over torch')
  names = [name for name, _, _ in variants] + ['torch'] + [f'{name}/t' for name, _, _ in variants]
  print(f'{"side":>4} {"in":>4} {"out":>4} {"k":>2} {"s":>2}  | forward: '
        + ' '.join(f'{name:>7}' for name in names) + ' | fwd+bwd: '
        + ' '.join(f'{name:>7}' for name in names))
  totals = np.zeros(2 * (len(variants) + 1))
  for side, cin, cout, k, s in shapes:
    x = rng.standard_normal((n, side, side, cin), np.float32)
    w = rng.standard_normal((k, k, cin, cout), np.float32) * 0.1
    jx, jw = jnp.asarray(x), jnp.asarray(w)
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    tx.requires_grad_(True)
    tw.requires_grad_(True)
    pairs = [_jax_fns(k, s, conv_fn, opts) for _, conv_fn, opts in variants]
    traced = jax.make_jaxpr(_jax_fns(k, s, auto_conv_general_dilated, None)[0])(jx, jw)
    patched = 'conv_general_dilated' not in str(traced)  # (Options: top-level jits only.)

    def torch_forward():
      with torch.no_grad():
        F.conv2d(tx, tw, stride=s, padding=k // 2)

    def torch_backward():
      (F.conv2d(tx, tw, stride=s, padding=k // 2) ** 2).sum().backward()

    fns = ([lambda f=f: jax.block_until_ready(f(jx, jw)) for f, _ in pairs] + [torch_forward]
           + [lambda f=f: jax.block_until_ready(f(jx, jw)) for _, f in pairs] + [torch_backward])
    medians = _interleaved(fns)
    totals += medians
    print(f'{side:4d} {cin:4d} {cout:4d} {k:2d} {s:2d} {"*" if patched else " "}| {_cells(medians)}',
          flush=True)
  print(f'{"all distinct convs":<20}| {_cells(totals)}')
  if _MODEL.value == 'resnet18':
    _time_stem_pool(rng, n, _IMAGE_SIZE.value // 2, options)


def _interleaved(fns) -> np.ndarray:
  """Median milliseconds of each of `fns`, timed in turn round after round (after a warm-up)."""
  for fn in fns:  # Warm-up and compilation.
    fn()
  times = [[] for _ in fns]
  for _ in range(_ROUNDS.value):
    for i, fn in enumerate(fns):
      times[i].append(_seconds(fn))
  return np.array([statistics.median(t) for t in times]) * 1e3


def _time_stem_pool(rng, n: int, side: int, options) -> None:
  """ResNet's 3x3/2 max pool after the stem, forward and backward: XLA's reduce-window with its
  default options and with the trainer's, and torch."""
  x = rng.standard_normal((n, side, side, 64), np.float32)
  jx = jnp.asarray(x)
  tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  tx.requires_grad_(True)
  loss = lambda x: jnp.sum(nnx.max_pool(x, (3, 3), strides=(2, 2),  # noqa: E731
                                        padding=((1, 1), (1, 1))) ** 2)
  grads = [jax.jit(jax.grad(loss), compiler_options=opts) for opts in (None, options)]

  def torch_backward():
    (F.max_pool2d(tx, 3, 2, 1) ** 2).sum().backward()

  ms = _interleaved([lambda g=g: jax.block_until_ready(g(jx)) for g in grads] + [torch_backward])
  print(f'max pool 3x3/2 of {side}x{side}x64, fwd+bwd: xla+ynn {ms[0]:.2f}, xla {ms[1]:.2f}, '
        f'torch {ms[2]:.2f} ({ms[0] / ms[2]:.2f}x / {ms[1] / ms[2]:.2f}x torch)')


def _cells(ms: np.ndarray) -> str:
  """Each variant's and torch's ms, then each variant over torch: forward, then fwd+bwd."""
  half = len(ms) // 2
  return ' | '.join(
      ' '.join(f'{v:7.2f}' for v in part) + ' ' + ' '.join(f'{v / part[-1]:7.2f}' for v in part[:-1])
      for part in (ms[:half], ms[half:]))


if __name__ == '__main__':
  app.run(main)
