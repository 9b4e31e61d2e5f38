"""Throughput of the train step and of the input pipelines, as the trainer runs them.

    jaxcls bench                                  # every model, 32 and 224, f32 and bf16
    jaxcls bench --models=resnet50 --image_sizes=224 --dtypes=bfloat16 \\
        --batch_sizes=256 --pipelines=synthetic,memory,folder,device --json=bench.json
    XLA_FLAGS=--xla_force_host_platform_device_count=4 jaxcls bench --devices=1,2,4 \\
        --models=cifar_resnet20 --image_sizes=32 --dtypes=float32     # weak scaling
    jaxcls bench --models=resnet18 --image_sizes=32 --conv_lowerings=auto,xla
    jaxcls bench --smoke                          # seconds: CI checks that it runs

For each model x image size x dtype x batch size x device count it builds
the train and eval steps exactly as `jaxcls.training.loop` does (`steps.jit_steps`:
uint8 batches normalised on the device, the state donated, Mixup/CutMix and
device augmentation inside the step when the config asks for them) and
reports compile time, train-step and eval images/s on synthetic batches
already on the device (warm-up excluded; median of `--repeats` timings of
`--steps` steps, and half their range as the spread), peak device memory
(the allocator's peak where the device reports one, else XLA's estimate of
the step), XLA's FLOPs per image and the model FLOPs utilisation against the
device's peak. The FLOPs are the network's: XLA's count of the same step with
XLA's own convolutions, since a convolution that `model.conv_lowering='auto'`
turns into a patch matmul on CPU also counts its taps on padding.
`--conv_lowerings=auto,xla` times both lowerings side by side.

`--pipelines` adds, per input pipeline, the input-only rate (batches on the
host, or gathered on the device, without the step) and the end-to-end rate
of the step fed by it:

  memory   Grain over uint8 arrays in host memory: the default config's data
           (scikit-learn's digits, 8x8, resized per example as in training)
  folder   Grain over a folder of JPEGs decoded and resized per example (cut
           from scikit-learn's sample photos, a seventh larger than the input)
  device   `data.on_device` over the digits: resized once, batches gathered,
           cropped and flipped on the device

`--batch_sizes` are per device: with `--devices=1,2,4` the global batch
grows with the device count (weak scaling), and the last table gives the
images/s per device and the efficiency relative to one device. The same
rows are printed by benchmarks/bench_torch.py for PyTorch, in the same columns.
"""

import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from jaxcls import data
from jaxcls.training import parallel
from jaxcls.config import default_config
from jaxcls.data.on_device import DeviceTrainSet
from jaxcls.data.sources import ImageFileSource
from jaxcls.training.metrics import eval_metrics_class
from jaxcls.data import mixing
from jaxcls.models import create_model
from jaxcls.models.conv import LOWERINGS, set_conv_lowering
from jaxcls.models.registry import accepts
from jaxcls.training.optim import create_optimizer, learning_rate_schedule
from jaxcls.training.steps import StepSpec, create_train_state, jit_steps

from jaxcls.launch import trace_summary

_MODELS = flags.DEFINE_list('models', ['cifar_resnet20', 'resnet18', 'resnet50', 'vgg16',
                                       'convnext_tiny'], 'Models of the registry.')
_IMAGE_SIZES = flags.DEFINE_list('image_sizes', ['32', '224'], 'Sides of the square input.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes (model.dtype).')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['128'], 'Batch sizes per device.')
_DEVICES = flags.DEFINE_list('devices', None, 'Device counts (default: all devices).')
_PIPELINES = flags.DEFINE_list('pipelines', ['synthetic'],
                               'synthetic, and any of memory, folder, device.')
_CONV_LOWERINGS = flags.DEFINE_list(
    'conv_lowerings', ['auto'], 'model.conv_lowering values to time side by side: auto, xla.')
_WIDTH = flags.DEFINE_integer('width', 0, 'model.width (0: the architecture\'s own).')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 1000, 'Classes of the head.')
_MIXUP = flags.DEFINE_bool('mixup', False, 'Mixup 0.2 + CutMix 1.0 in the step (timm style).')
_EVAL = flags.DEFINE_bool('eval', True, 'Also time the eval step (--noeval: train only).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Steps per timing.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timings per figure; the median is reported.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
_NUM_THREADS = flags.DEFINE_list('num_threads', ['4'], 'data.num_threads of the pipelines; '
                                  'several: each pipeline timed with each, side by side.')
_NUM_WORKERS = flags.DEFINE_integer('num_workers', 0, 'data.num_workers of the pipelines.')
_PEAK_TFLOPS = flags.DEFINE_float('peak_tflops', None,
                                  'Peak TFLOP/s of one device for MFU (default: a table of '
                                  'known accelerators; none for CPUs).')
_PROFILE_DIR = flags.DEFINE_string('profile_dir', None,
                                   'Trace train steps of the first row here, after its timed '
                                   'ones (TensorBoard; the JSON row gets a summary).')
_PROFILE_STEPS = flags.DEFINE_integer('profile_steps', 3, 'Train steps traced with --profile_dir.')
_JSON = flags.DEFINE_string('json', None, 'Also write every row to this JSON file.')
_SMOKE = flags.DEFINE_bool('smoke', False, 'A few steps of a tiny model on every path (CI).')

# Dense peak FLOP/s of one device by `device_kind` prefix: bfloat16, and
# float32 as XLA runs it by default (TF32 tensor cores on NVIDIA GPUs).
PEAK_FLOPS = {
    'NVIDIA H100': dict(bfloat16=989e12, float32=494e12),
    'NVIDIA H200': dict(bfloat16=989e12, float32=494e12),
    'NVIDIA A100': dict(bfloat16=312e12, float32=156e12),
    'TPU v4': dict(bfloat16=275e12, float32=275e12),
    'TPU v5 lite': dict(bfloat16=197e12, float32=197e12),
    'TPU v5p': dict(bfloat16=459e12, float32=459e12),
    'TPU v6 lite': dict(bfloat16=918e12, float32=918e12),
}

COLUMNS = ('framework', 'model', 'size', 'dtype', 'batch', 'devices', 'variant', 'compile_s',
           'train_img/s', 'spread', 'eval_img/s', 'peak_MiB', 'GFLOP/img', 'MFU')


@dataclasses.dataclass(frozen=True)
class Case:
  model: str
  image_size: int
  dtype: str
  batch_size: int  # Per device.
  devices: int
  conv_lowering: str = 'auto'

  @property
  def variant(self) -> str:
    return 'jit' + ('+mixup' if _MIXUP.value else '') + (
        '+xla_conv' if self.conv_lowering == 'xla' else '')

  @property
  def global_batch(self) -> int:
    return self.batch_size * self.devices


def peak_flops(dtype: str) -> float | None:
  if _PEAK_TFLOPS.value:
    return _PEAK_TFLOPS.value * 1e12
  kind = jax.devices()[0].device_kind
  for prefix, peaks in PEAK_FLOPS.items():
    if kind.startswith(prefix):
      return peaks[dtype]
  return None


def timed(step: Callable[[], None], result: Callable[[], object], *, steps: int,
          repeats: int) -> list[float]:
  """Seconds per `step`, measured `repeats` times over `steps` calls dispatched back to back,
  waiting on the device once per timing (as the train loop does: no sync between steps)."""
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    for _ in range(steps):
      step()
    jax.block_until_ready(result())
    times.append((time.perf_counter() - started) / steps)
  return times


def rate(times: list[float], images: int) -> tuple[float, float]:
  """(median images/s, half the range of images/s) of per-step times."""
  rates = [images / t for t in times]
  return statistics.median(rates), (max(rates) - min(rates)) / 2


def build(case: Case, config, num_classes: int):
  """The trainer's jitted steps, a replicated state, a sharded synthetic batch, and the train
  step with XLA's convolutions, whose cost analysis counts the model's FLOPs (a convolution
  lowered to a patch matmul also counts the kernel taps that fall on padding)."""
  mesh = parallel.data_mesh(jax.devices()[:case.devices])
  kwargs = dict(dtype=case.dtype, **({'width': _WIDTH.value} if _WIDTH.value else {}))
  if accepts(case.model, 'img_size'):  # A ViT's position embeddings fix its input size.
    kwargs['img_size'] = case.image_size
  model = create_model(case.model, num_classes, conv_lowering=case.conv_lowering, **kwargs)
  learning_rate_fn = learning_rate_schedule(config.optimizer, steps_per_epoch=100, num_epochs=1)
  tx = create_optimizer(config.optimizer, learning_rate_fn)
  train_graph, eval_graph, state = create_train_state(model, tx, config.seed)
  if case.conv_lowering != 'xla':
    set_conv_lowering(model, 'xla')
    model.train()
    flops_graph = nnx.graphdef(model)
  del model
  state = jax.device_put(state, parallel.replicated(mesh))
  mixup = mixing.from_config(config.mixup)
  steps = lambda graph: jit_steps(StepSpec(  # noqa: E731
      train_graph=graph, eval_graph=eval_graph, tx=tx,
      metrics_cls=eval_metrics_class(num_classes), mean=config.data.mean or (0.5,) * 3,
      std=config.data.std or (0.25,) * 3, dtype=case.dtype, augment=config.data.augment,
      mixup=mixup))
  train_fn, eval_fn = steps(train_graph)
  flops_fn = train_fn if case.conv_lowering == 'xla' else steps(flops_graph)[0]
  rng = np.random.default_rng(0)
  size = case.image_size
  batch = dict(image=rng.integers(0, 256, (case.global_batch, size, size, 3), dtype=np.uint8),
               label=rng.integers(0, num_classes, (case.global_batch,), dtype=np.int32))
  sharding = parallel.batch_sharded(mesh)
  batch = jax.device_put(batch, sharding)
  eval_batch = dict(batch, mask=jax.device_put(np.ones(case.global_batch, bool), sharding))
  return state, train_fn, eval_fn, flops_fn, batch, eval_batch, sharding


def _cost_flops(stage) -> float:
  cost = stage.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def _peak_memory_mib(compiled) -> tuple[float | None, str]:
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20, 'allocator'
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None, 'unknown'
  total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
           + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  return total / 2**20, 'xla estimate'


def measure_steps(case: Case, config, num_classes: int, *, steps: int, repeats: int,
                  warmup: int, profile_dir: str | None = None) -> tuple[dict, Callable, dict]:
  """One table row: compile time, train and eval rates, memory, FLOPs and MFU."""
  state, train_fn, eval_fn, flops_fn, batch, eval_batch, sharding = build(case, config,
                                                                          num_classes)
  started = time.perf_counter()
  compiled = train_fn.lower(state, batch).compile()
  compile_seconds = time.perf_counter() - started
  # The lowered program is the global one (partitioning happens when compiling).
  flops_per_image = _cost_flops(flops_fn.lower(state, batch)) / case.global_batch
  holder = {'state': state}

  def train_step(batch=batch):
    holder['state'], _ = compiled(holder['state'], batch)

  timed(train_step, lambda: holder['state'], steps=max(warmup, 1), repeats=1)
  train_times = timed(train_step, lambda: holder['state'], steps=steps, repeats=repeats)
  trace = _trace(train_step, lambda: holder['state'], profile_dir) if profile_dir else None
  memory, memory_source = _peak_memory_mib(compiled)
  eval_rate = None
  if _EVAL.value:
    compiled_eval = eval_fn.lower(holder['state'], eval_batch).compile()

    def eval_step():
      holder['metrics'] = compiled_eval(holder['state'], eval_batch)

    eval_step()
    eval_times = timed(eval_step, lambda: holder['metrics'], steps=steps, repeats=repeats)
    eval_rate, _ = rate(eval_times, case.global_batch)
  train_rate, train_spread = rate(train_times, case.global_batch)
  peak = peak_flops(case.dtype)
  row = dict(framework='jax', model=case.model, image_size=case.image_size, dtype=case.dtype,
             batch_size=case.global_batch, devices=case.devices,
             variant=case.variant, compile_seconds=compile_seconds,
             train_images_per_second=train_rate, train_spread=train_spread,
             eval_images_per_second=eval_rate, peak_memory_mib=memory,
             peak_memory_source=memory_source, train_flops_per_image=flops_per_image,
             mfu=(flops_per_image * train_rate / case.devices / peak) if peak else None,
             device=jax.devices()[0].device_kind, jax_version=jax.__version__)
  if trace is not None:
    row['trace'] = trace
  return row, train_step, dict(sharding=sharding, holder=holder)


def _trace(train_step: Callable, result: Callable, profile_dir: str) -> dict:
  """Traces `--profile_steps` train steps, after the timed ones (the profiler slows what it
  watches), and summarises where the device's time went (jaxcls/launch/trace_summary.py)."""
  jax.profiler.start_trace(profile_dir)
  timed(train_step, result, steps=_PROFILE_STEPS.value, repeats=1)
  jax.profiler.stop_trace()
  try:
    return trace_summary.summarize(profile_dir)
  except Exception as e:  # pylint: disable=broad-except  # The figures stand without it.
    return dict(error=f'{type(e).__name__}: {e}')


# ----------------------------------------------------------------- pipelines ---

def _jpeg_folder(root: Path, size: int, count: int) -> ImageFileSource:
  """`count` JPEGs cut from scikit-learn's two sample photos, a little larger than `size`, so
  every example is decoded and resized as a real folder's would be."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photos = load_sample_images().images
  rng = np.random.default_rng(0)
  side = max(size + size // 7, size + 1)
  paths, labels = [], []
  for i in range(count):
    photo = photos[i % len(photos)]
    crop = min(photo.shape[:2])
    top = rng.integers(0, photo.shape[0] - crop + 1)
    left = rng.integers(0, photo.shape[1] - crop + 1)
    image = Image.fromarray(photo[top:top + crop, left:left + crop]).resize((side, side))
    path = root / f'class{i % 10}' / f'{i:05d}.jpg'
    if not path.exists():  # Written once per size, read by every case of that size.
      path.parent.mkdir(parents=True, exist_ok=True)
      image.save(path, quality=90)
    paths.append(str(path))
    labels.append(i % 10)
  return ImageFileSource(paths, labels)


def measure_pipeline(kind: str, case: Case, config, train_step: Callable, state: dict, *,
                     steps: int, repeats: int, workdir: Path) -> dict:
  """Input-only and end-to-end images/s of one pipeline feeding the built train step."""
  num_batches = (repeats + 1) * steps
  config.data.image_size = case.image_size
  config.data.epoch_examples = num_batches * case.global_batch  # Sources are cycled through.
  if kind == 'folder':
    source = _jpeg_folder(workdir / f'jpeg{case.image_size}', case.image_size, 512)
  else:  # The default config's data: digits, 8x8 arrays resized per example.
    config.data.source = 'digits'
    source = data.load_dataset(config.data, None).train
  sharding = state['sharding']
  if kind == 'device':
    device_set = DeviceTrainSet(source, config.data, sharding, seed=0)
    batches = lambda: device_set.batches(global_batch_size=case.global_batch,  # noqa: E731
                                         epoch=0)
  else:
    batches = lambda: parallel.prefetch_to_device(  # noqa: E731
        data.train_batches(source, config.data, global_batch_size=case.global_batch, seed=0,
                           epoch=0), sharding, config.data.prefetch)
  input_times = []
  for _ in range(2):  # The first pass warms the threads and, for 'device', compiles the gather.
    iterator, started = batches(), time.perf_counter()
    for _ in range(num_batches):
      jax.block_until_ready(next(iterator))
    input_times.append((time.perf_counter() - started) / num_batches)
  # Each round times the step on the synthetic batch, then fed by the pipeline: the ratio of
  # the two is taken side by side, on the same machine state.
  end_to_end, synthetic = [], []
  iterator = batches()
  result = lambda: state['holder']['state']  # noqa: E731
  for _ in range(steps):  # Warm-up: the pipeline's threads and queues fill.
    train_step(next(iterator))
  for _ in range(repeats):
    synthetic += timed(train_step, result, steps=steps, repeats=1)
    end_to_end += timed(lambda: train_step(next(iterator)), result, steps=steps, repeats=1)
  input_rate = case.global_batch / input_times[-1]
  e2e_rate, e2e_spread = rate(end_to_end, case.global_batch)
  return dict(pipeline=kind, model=case.model, image_size=case.image_size, dtype=case.dtype,
              batch_size=case.global_batch, devices=case.devices,
              input_images_per_second=input_rate, end_to_end_images_per_second=e2e_rate,
              end_to_end_spread=e2e_spread,
              synthetic_images_per_second=rate(synthetic, case.global_batch)[0],
              end_to_end_vs_synthetic=statistics.median(
                  s / e for s, e in zip(synthetic, end_to_end)),
              num_threads=config.data.num_threads, num_workers=config.data.num_workers)


# ---------------------------------------------------------------------- main ---

def _fmt(value, digits=1) -> str:
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return '-'
  return f'{value:.{digits}f}' if isinstance(value, float) else str(value)


def _percent(fraction: float | None) -> str:
  return '-' if fraction is None else f'{100 * fraction:.1f}%'


def format_row(row: dict) -> str:
  return (f'{row["framework"]:<9} {row["model"]:<15} {row["image_size"]:>4} {row["dtype"]:<8} '
          f'{row["batch_size"]:>5} {row["devices"]:>7} {row["variant"]:<18} '
          f'{_fmt(row["compile_seconds"]):>9} {_fmt(row["train_images_per_second"]):>11} '
          f'{_fmt(row["train_spread"]):>7} {_fmt(row["eval_images_per_second"]):>10} '
          f'{_fmt(row["peak_memory_mib"], 0):>8} '
          f'{_fmt(row["train_flops_per_image"] / 1e9, 3):>9} '
          f'{_percent(row["mfu"]):>6}')


def header() -> str:
  widths = (9, 15, 4, 8, 5, 7, 18, 9, 11, 7, 10, 8, 9, 6)
  return ' '.join(f'{c:<{w}}' if i in (0, 1, 3, 6) else f'{c:>{w}}'
                  for i, (c, w) in enumerate(zip(COLUMNS, widths)))


def cases() -> list[Case]:
  counts = [int(n) for n in _DEVICES.value] if _DEVICES.value else [jax.device_count()]
  for n in counts:
    if not 1 <= n <= jax.device_count():
      raise app.UsageError(f'--devices={n}: this machine has {jax.device_count()} devices')
  unknown = set(_CONV_LOWERINGS.value) - set(LOWERINGS)
  if unknown:
    raise app.UsageError(f'--conv_lowerings: unknown {sorted(unknown)}; known: {LOWERINGS}')
  return [Case(m, int(s), d, int(b), n, c) for m in _MODELS.value for s in _IMAGE_SIZES.value
          for d in _DTYPES.value for b in _BATCH_SIZES.value for n in counts
          for c in _CONV_LOWERINGS.value]


def main(argv):
  del argv
  if _SMOKE.value:
    flags.FLAGS.models, flags.FLAGS.image_sizes = ['cifar_resnet20'], ['16']
    flags.FLAGS.dtypes, flags.FLAGS.batch_sizes, flags.FLAGS.width = ['bfloat16'], ['8'], 4
    flags.FLAGS.steps, flags.FLAGS.repeats, flags.FLAGS.warmup = 2, 2, 1
    flags.FLAGS.pipelines, flags.FLAGS.num_classes = ['synthetic', 'memory', 'folder', 'device'], 10
    flags.FLAGS.devices = sorted({'1', str(jax.device_count())})
  unknown = set(_PIPELINES.value) - {'synthetic', 'memory', 'folder', 'device'}
  if unknown:
    raise app.UsageError(f'--pipelines: unknown {sorted(unknown)}')
  config = default_config()
  thread_counts = [int(n) for n in _NUM_THREADS.value]
  config.data.num_workers = _NUM_WORKERS.value
  if _MIXUP.value:
    config.mixup.mixup_alpha, config.mixup.cutmix_alpha = 0.2, 1.0
  print(f'jax {jax.__version__}: {jax.device_count()} x {jax.devices()[0].device_kind}; '
        f'{time.strftime("%Y-%m-%d %H:%M")}; steps {_STEPS.value} x repeats {_REPEATS.value}')
  print(header())
  rows, pipeline_rows = [], []

  def save(scaling=()):  # After every row: a run stopped midway keeps what it measured.
    if _JSON.value:
      Path(_JSON.value).write_text(json.dumps(
          dict(steps=rows, pipelines=pipeline_rows, scaling=list(scaling)), indent=2))

  with tempfile.TemporaryDirectory() as tmp:
    for i, case in enumerate(cases()):
      row, train_step, state = measure_steps(
          case, config, _NUM_CLASSES.value, steps=_STEPS.value, repeats=_REPEATS.value,
          warmup=_WARMUP.value, profile_dir=_PROFILE_DIR.value if i == 0 else None)
      rows.append(row)
      save()
      print(format_row(row), flush=True)
      if row.get('trace'):
        print(trace_summary.format_summary(row['trace']), flush=True)
      for kind in _PIPELINES.value:
        if kind == 'synthetic':
          continue
        # The on-device set uses no host threads: timed once.
        for threads in thread_counts[:1] if kind == 'device' else thread_counts:
          pipeline_config = config.copy_and_resolve_references()
          pipeline_config.data.num_threads = threads
          pipeline_rows.append(measure_pipeline(
              kind, case, pipeline_config, train_step, state,
              steps=_STEPS.value, repeats=_REPEATS.value, workdir=Path(tmp)))
          save()
  if pipeline_rows:
    print(f'\n{"pipeline":<9} {"model":<15} {"size":>4} {"dtype":<8} {"batch":>5} '
          f'{"devices":>7} {"threads":>7} {"input_img/s":>11} {"e2e_img/s":>10} '
          f'{"e2e/synthetic":>13}')
    for p in pipeline_rows:
      threads = '-' if p['pipeline'] == 'device' else p['num_threads']
      print(f'{p["pipeline"]:<9} {p["model"]:<15} {p["image_size"]:>4} {p["dtype"]:<8} '
            f'{p["batch_size"]:>5} {p["devices"]:>7} {threads:>7} '
            f'{p["input_images_per_second"]:11.1f} '
            f'{p["end_to_end_images_per_second"]:10.1f} '
            f'{p["end_to_end_vs_synthetic"]:13.2f}')
  scaling = scaling_rows(rows)
  if scaling:
    print(f'\n{"model":<15} {"size":>4} {"dtype":<8} {"devices":>7} {"img/s/device":>12} '
          f'{"efficiency":>10}')
    for s in scaling:
      print(f'{s["model"]:<15} {s["image_size"]:>4} {s["dtype"]:<8} {s["devices"]:>7} '
            f'{s["images_per_second_per_device"]:12.1f} {s["efficiency"]:10.2f}')
  save(scaling)


def scaling_rows(rows: list[dict]) -> list[dict]:
  """Images/s per device and weak-scaling efficiency against the one-device row of each case."""
  out = []
  key = lambda r: (r['model'], r['image_size'], r['dtype'], r['batch_size'] // r['devices'])  # noqa: E731
  single = {key(r): r['train_images_per_second'] for r in rows if r['devices'] == 1}
  for r in rows:
    if key(r) in single and len({s['devices'] for s in rows if key(s) == key(r)}) > 1:
      per_device = r['train_images_per_second'] / r['devices']
      out.append(dict(model=r['model'], image_size=r['image_size'], dtype=r['dtype'],
                      devices=r['devices'], images_per_second_per_device=per_device,
                      efficiency=per_device / single[key(r)]))
  return out


if __name__ == '__main__':
  app.run(main)
