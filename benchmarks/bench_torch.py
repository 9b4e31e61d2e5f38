r"""PyTorch twin of `python benchmarks/bench_train_step.py`: the same models, step and table, in torch.

    # GPU (torch + torchvision, timm for the ViTs): torch.compile against eager, bf16 autocast.
    python benchmarks/bench_torch.py --models=resnet50 --image_sizes=224 --dtypes=bfloat16 \
        --batch_sizes=256 --compile=on,off
    # CPU (torch only; the models come from tests/torch_*.py):
    python benchmarks/bench_torch.py --models=cifar_resnet20,resnet18 --image_sizes=32 \
        --dtypes=float32 --compile=off
    # Also check that each torch model costs the forward FLOPs of its jaxcls twin:
    python benchmarks/bench_torch.py --smoke --check_jax_flops

So that the two frameworks time the same work, the train step is the one
`jaxcls` jits: uint8 images already on the device, normalised there
(`(x/255 - 0.5)/0.25`), cross-entropy, SGD with momentum 0.9, lr 0.1, weight
decay 1e-4. bfloat16 is `torch.autocast` over forward and loss (float32 master
weights, float32 loss). float32 on an NVIDIA GPU runs its convolutions and
matmuls on TF32 tensor cores, as XLA does by default (and cuDNN convolutions in
torch by default); `--notf32` makes torch's strict, and then compares with
`JAX_DEFAULT_MATMUL_PRECISION=highest` on the JAX side.

Per row: compile_s, the seconds of the warm-up steps (train and eval; with
torch.compile they hold the compilations); train and eval images/s, the median
over repeats of steps*batch/seconds, the device synchronised at the end of each
repeat, and the train spread, (max-min)/2 over repeats; the peak device memory
(CUDA only); the FLOPs of a train step per image; and MFU, those FLOPs at the
measured rate over the device's peak. `FlopCounterMode` counts convolutions
and matmuls, every kernel tap included, whereas XLA's cost analysis (the JAX
table's figure) leaves out the taps that fall on padding, which on small maps
is a lot (resnet18 at 32px: -40%). So that GFLOP/img and MFU compare across
the two tables, the train FLOPs are scaled by the forward pass's ratio of the
two conventions (`xla_conv_flop`); the JSON also keeps FlopCounterMode's own
count (`train_flops_per_image_all_taps`).
"""

import datetime
import functools
import importlib
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from absl import app, flags
from torch.utils.flop_counter import FlopCounterMode

TESTS = Path(__file__).resolve().parents[1] / 'tests'
COLUMNS = ('framework model size dtype batch devices variant compile_s train_img/s spread '
           'eval_img/s peak_MiB GFLOP/img MFU').split()
# Dense peak FLOP/s by dtype, matched against the CUDA device name in order.
# float32: the TF32 tensor-core peak (see `--tf32`); strict float32 peaks are
# far lower (H100 SXM 67e12).
PEAK_FLOPS = (('H100 PCIe', {'bfloat16': 756e12, 'float32': 378e12}),
              ('H100', {'bfloat16': 989e12, 'float32': 494e12}),
              ('H200', {'bfloat16': 989e12, 'float32': 494e12}),
              ('A100', {'bfloat16': 312e12, 'float32': 156e12}))
# XLA's cost analysis leaves out the kernel taps that fall on padding (resnet18
# at 32x32: -40% against FlopCounterMode, whose layer4 3x3 convs see 1x1 maps),
# so the check counts torch's convolutions that way too (`xla_conv_flop`). XLA
# also counts the elementwise ops FlopCounterMode leaves out (norms, ReLU/GELU,
# residual adds, pooling), which puts it above torch by, at 32 and 224px: vgg16
# +0.1%, resnet18 +0.7/+0.4%, resnet50 +1.6/+1.3%, cifar_resnet20 +1.9/+1.7%,
# convnext_tiny (LayerNorm, GELU on 4x wide maps) +6.8/+6.7%. A stage one block
# deeper or shallower moves them by 45% or more.
FLOPS_RTOL = 0.08
SMOKE = dict(models=['cifar_resnet20'], image_sizes=['16'], batch_sizes=['4'], compile=['off'],
             steps=2, repeats=2, warmup=1)


def _define_flags() -> None:
  # Defined only when run as a script, so tests can import the helpers below.
  flags.DEFINE_list('models', ['resnet18', 'resnet50', 'vgg16', 'convnext_tiny',
                               'cifar_resnet20'], 'Models to time.')
  flags.DEFINE_list('image_sizes', ['32', '224'], 'Sides of the square inputs.')
  flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'float32 and/or bfloat16 (autocast).')
  flags.DEFINE_list('batch_sizes', ['128'], 'Batch sizes.')
  flags.DEFINE_list('compile', ['on', 'off'], 'torch.compile the model: on and/or off.')
  flags.DEFINE_bool('channels_last', True, 'Model and input in channels_last memory format.')
  flags.DEFINE_bool('tf32', True, 'float32 convolutions and matmuls on TF32 tensor cores (as '
                    'XLA by default); --notf32: strict float32.')
  flags.DEFINE_integer('num_classes', 1000, 'Outputs of the classifier.')
  flags.DEFINE_integer('steps', 10, 'Timed steps per repeat.')
  flags.DEFINE_integer('repeats', 5, 'Timed repeats; images/s is their median.')
  flags.DEFINE_integer('warmup', 3, 'Untimed steps first (they hold the compilation).')
  flags.DEFINE_string('device', 'auto', "'auto' (cuda if available, else cpu), 'cuda' or 'cpu'.")
  flags.DEFINE_float('peak_tflops', None, 'Peak TFLOP/s for MFU where the device is not known.')
  flags.DEFINE_string('json', None, 'Also write the rows to this JSON file.')
  flags.DEFINE_bool('smoke', False, 'Tiny run for tests: cifar_resnet20 at 16px, batch 4, eager.')
  flags.DEFINE_bool('check_jax_flops', False,
                    'Assert that each model costs the forward FLOPs of its jaxcls twin.')


def _first_line(e):
  return f'{type(e).__name__}: {(str(e).strip().splitlines() or [""])[0]}'


@functools.cache
def _optional(module):
  """torchvision or timm, or None: they fail to import on some machines (not only ImportError)."""
  try:
    return importlib.import_module(module)
  except Exception as e:  # pylint: disable=broad-except
    print(f'# {module} unavailable ({_first_line(e)}); models from {TESTS}')
    return None


_REFERENCES = ('resnet', 'vgg', 'convnext')  # tests/torch_{family}.py defines {family}(name, ...).


def model_source(name):
  """Where the torch twin of a jaxcls model comes from: torchvision where it imports (not for
  the CIFAR ResNets: it has none), timm for the ViTs (jaxcls's are timm's; torchvision has no
  ViT-S), else our transcription in tests/."""
  if name.startswith('vit_'):
    return 'timm' if _optional('timm') is not None else 'tests/torch_vit.py'
  if not name.startswith('cifar_') and _optional('torchvision') is not None:
    return 'torchvision'
  if name.startswith('efficientnet_b'):  # timm's B0-B7 (jaxcls's efficientnet_b*: timm's).
    return 'tests/torch_efficientnet.py'
  family = next((f for f in _REFERENCES if f in name), None)
  if family is None:
    raise ValueError(f'unknown model {name!r}')
  return f'tests/torch_{family}.py'


def build_model(name, num_classes):
  """torchvision's or timm's model where they import, else our transcription of it."""
  source = model_source(name)
  if source == 'torchvision':
    return getattr(_optional('torchvision').models, name)(weights=None, num_classes=num_classes)
  if source == 'timm':  # vit_small_patch16 -> timm's vit_small_patch16_224.
    return _optional('timm').create_model(f'{name}_224', pretrained=False,
                                          num_classes=num_classes)
  if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
  if source == 'tests/torch_vit.py':
    return importlib.import_module('torch_vit').timm_vit(name, num_classes=num_classes)
  if source == 'tests/torch_efficientnet.py':
    return importlib.import_module('torch_efficientnet').TimmEfficientNet(
        name.replace('_', '-'), num_classes=num_classes)
  family = Path(source).stem.removeprefix('torch_')
  return getattr(importlib.import_module(f'torch_{family}'), family)(name, num_classes=num_classes)


def normalise(images):
  """uint8 -> float, on the device and inside the step, as jaxcls' step does."""
  return (images.float() / 255 - 0.5) / 0.25


def count_flops(fn, custom_mapping=None):
  with FlopCounterMode(display=False, custom_mapping=custom_mapping) as counter:
    fn()
  return counter.get_total_flops()


def _taps_on_input(size, out_size, kernel, stride, padding, dilation):
  """Kernel taps, summed over the outputs of one spatial dim, that fall on input, not padding."""
  return sum(0 <= i * stride - padding + k * dilation < size
             for i in range(out_size) for k in range(kernel))


def xla_conv_flop(x_shape, w_shape, _bias, stride, padding, dilation, transposed, *args,
                  out_shape=None, **kwargs):
  """A convolution's FLOPs as XLA's cost analysis counts them: taps on padding left out.

  FlopCounterMode counts every tap; XLA only those on real input, which on a
  small map is most of the difference (a 3x3 conv on a 1x1 map: 1 tap of 9).
  """
  del args, kwargs
  assert not transposed
  taps = np.prod([_taps_on_input(*dims) for dims in zip(x_shape[2:], out_shape[2:], w_shape[2:],
                                                          stride, padding, dilation)])
  return 2 * x_shape[0] * w_shape[0] * w_shape[1] * int(taps)


def forward_flops(model, size, batch=1, xla_convention=False):
  """FLOPs of one float32 forward pass per image (eval mode, on the CPU)."""
  model = model.eval()
  mapping = {torch.ops.aten.convolution: xla_conv_flop} if xla_convention else None
  with torch.no_grad():
    return count_flops(lambda: model(torch.zeros(batch, 3, size, size)), mapping) / batch


@functools.cache
def jax_forward_flops(name, num_classes, size):
  """XLA's cost analysis of the jaxcls model's forward pass on one float32 NHWC image."""
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # Counting only; leaves the GPU to torch.
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxcls.models import create_model  # pylint: disable=g-import-not-at-top
  model = create_model(name, num_classes, conv_lowering='xla')  # The network's own FLOPs.
  model.eval()
  graph, state = nnx.split(model)
  forward = jax.jit(lambda s, x: nnx.merge(graph, s)(x))
  cost = forward.lower(state, jax.numpy.zeros((1, size, size, 3))).compile().cost_analysis()
  return (cost[0] if isinstance(cost, (list, tuple)) else cost)['flops']


def check_jax_flops(names, sizes, num_classes):
  """Asserts that each torch model is its jaxcls twin, by forward FLOPs counted XLA's way."""
  for name in names:
    for size in sizes:
      theirs = jax_forward_flops(name, num_classes, size)
      model = build_model(name, num_classes)
      ours, ours_all_taps = (forward_flops(model, size, xla_convention=xla) for xla in (True, False))
      print(f'# forward GFLOP/img {name} {size}px: jax (XLA) {theirs / 1e9:.4f}, torch counted '
            f'as XLA does {ours / 1e9:.4f} ({theirs / ours - 1:+.2%}), torch all taps '
            f'(the table\'s) {ours_all_taps / 1e9:.4f}')
      assert abs(theirs / ours - 1) <= FLOPS_RTOL, (name, size, ours, theirs)


def device_name(device):
  return torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'


def _sync(device):
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def timed(fn, device, steps, repeats):
  """Seconds of each of `repeats` runs of `steps` calls.

  The device works asynchronously: it is synchronised at both ends of each run,
  never in between, so the steps of a run overlap as they would in training.
  """
  seconds = []
  for _ in range(repeats):
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
      fn()
    _sync(device)
    seconds.append(time.perf_counter() - start)
  return seconds


def peak_flops(device, dtype, override_tflops):
  if override_tflops:
    return override_tflops * 1e12
  if device.type != 'cuda':
    return None
  return next((peaks[dtype] for key, peaks in PEAK_FLOPS if key in device_name(device)), None)


def bench_one(args, device, name, size, dtype, batch, compiled):
  """One row, or None where torch.compile fails."""
  torch.manual_seed(0)
  fmt = torch.channels_last if args.channels_last else torch.contiguous_format
  model = build_model(name, args.num_classes).to(device, memory_format=fmt).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
  images = images.to(device).contiguous(memory_format=fmt)
  labels = torch.randint(0, args.num_classes, (batch,), dtype=torch.int64).to(device)
  # Forward and loss only: backward ops run in the dtypes autocast chose forward.
  autocast = functools.partial(torch.autocast, device.type, torch.bfloat16,
                               enabled=dtype == 'bfloat16')
  net = model
  if compiled:
    torch._dynamo.reset()  # pylint: disable=protected-access  # Fresh guards: no recompile cap.
    net = torch.compile(model)

  def loss_fn(module):
    with autocast():
      return F.cross_entropy(module(normalise(images)).float(), labels)

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    loss_fn(net).backward()
    optimizer.step()

  def eval_step():
    with torch.no_grad(), autocast():
      net(normalise(images))

  train_flops = count_flops(lambda: loss_fn(model).backward()) / batch
  with torch.no_grad():
    fwd_flops = count_flops(lambda: loss_fn(model)) / batch
    fwd_flops_xla = count_flops(lambda: loss_fn(model),
                                {torch.ops.aten.convolution: xla_conv_flop}) / batch
  train_flops_xla = train_flops * fwd_flops_xla / fwd_flops  # The JAX table's convention.
  if device.type == 'cuda':
    torch.cuda.reset_peak_memory_stats(device)
  try:
    warm = timed(train_step, device, args.warmup, 1)[0]
    train = timed(train_step, device, args.steps, args.repeats)
    model.eval()
    warm += timed(eval_step, device, args.warmup, 1)[0]
  except Exception as e:  # pylint: disable=broad-except
    if not compiled:
      raise
    print(f'# {name} {size}px {dtype} batch {batch}: torch.compile failed, variant skipped: '
          f'{_first_line(e)}')
    return None
  evals = timed(eval_step, device, args.steps, args.repeats)
  rates = [args.steps * batch / s for s in train]
  train_rate = statistics.median(rates)
  peak = peak_flops(device, dtype, args.peak_tflops)
  return dict(
      framework='torch', model=name, image_size=size, dtype=dtype, batch_size=batch, devices=1,
      variant=('compile' if compiled else 'eager') + ('+cl' if args.channels_last else ''),
      compile_seconds=warm, train_images_per_second=train_rate,
      train_spread=(max(rates) - min(rates)) / 2,
      eval_images_per_second=statistics.median(args.steps * batch / s for s in evals),
      peak_memory_mib=(torch.cuda.max_memory_allocated(device) / 2**20
                       if device.type == 'cuda' else None),
      train_flops_per_image=train_flops_xla, forward_flops_per_image=fwd_flops_xla,
      train_flops_per_image_all_taps=train_flops,
      mfu=train_flops_xla * train_rate / peak if peak else None,
      device=device_name(device),
      torch_version=torch.__version__)


def format_row(r):
  def opt(value, fmt):
    return '-' if value is None else fmt % value
  return [r['framework'], r['model'], str(r['image_size']), r['dtype'], str(r['batch_size']),
          str(r['devices']), r['variant'], '%.1f' % r['compile_seconds'],
          '%.1f' % r['train_images_per_second'], '%.1f' % r['train_spread'],
          '%.1f' % r['eval_images_per_second'], opt(r['peak_memory_mib'], '%.0f'),
          '%.3f' % (r['train_flops_per_image'] / 1e9), opt(r['mfu'] and 100 * r['mfu'], '%.1f%%')]


def _print_row(cells, widths=(9, 15, 5, 9, 6, 8, 18, 10, 12, 8, 11, 9, 10, 6)):
  print(' '.join(c.rjust(w) if i > 6 else c.ljust(w)
                 for i, (c, w) in enumerate(zip(cells, widths))), flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  args = flags.FLAGS
  if args.smoke:
    for key, value in SMOKE.items():
      setattr(args, key, value)
  if not set(args.dtypes) <= {'float32', 'bfloat16'} or not set(args.compile) <= {'on', 'off'}:
    raise app.UsageError(f'--dtypes={args.dtypes} --compile={args.compile}: '
                         'expected float32,bfloat16 and on,off')
  device = torch.device(args.device if args.device != 'auto'
                        else 'cuda' if torch.cuda.is_available() else 'cpu')
  torch.backends.cuda.matmul.allow_tf32 = args.tf32  # See the module docstring.
  torch.backends.cudnn.allow_tf32 = args.tf32
  torch.backends.cudnn.benchmark = True
  now = datetime.datetime.now(datetime.timezone.utc)
  print(f'# torch {torch.__version__} on {device_name(device)} ({device}, '
        f'{torch.get_num_threads()} CPU threads), {now:%Y-%m-%d %H:%M} UTC')
  sizes, batches = [int(s) for s in args.image_sizes], [int(b) for b in args.batch_sizes]
  for name in args.models:
    print(f'# {name}: {model_source(name)}')
  if args.check_jax_flops:
    check_jax_flops(args.models, sizes, args.num_classes)
  _print_row(COLUMNS)
  rows = []
  for name, size, dtype, batch, compiled in itertools.product(
      args.models, sizes, args.dtypes, batches, [c == 'on' for c in args.compile]):
    row = bench_one(args, device, name, size, dtype, batch, compiled)
    if row:
      _print_row(format_row(row))
      rows.append(row)
      if args.json:  # After every row: a run stopped midway keeps what it measured.
        Path(args.json).write_text(json.dumps(rows, indent=1) + '\n')
    if device.type == 'cuda':
      torch.cuda.empty_cache()


if __name__ == '__main__':
  _define_flags()
  app.run(main)
