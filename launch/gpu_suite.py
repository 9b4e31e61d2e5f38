r"""The trainer measured on one GPU in one command: throughput against PyTorch, MFU, input
pipelines, fine-tuning strategies' step costs and real CIFAR-10 fine-tuning.

    python launch/gpu_suite.py --out DIR [--budget_s 470] [--parts NAME,...]
        [--cifar ../shared/data/cifar10-jpg/cifar10-jpg.tar.gz]
    python launch/gpu_suite.py --smoke --out DIR      # every part in seconds on a CPU (CI)
    python launch/gpu_suite.py --merge A/suite.json B/suite.json --out DIR   # one report

Each part runs the project's own tools as subprocesses (the benchmarks, or
`python -m jaxcls.main`), in this order, each given at most its share of the
time left (`--budget_s` in all, 470 s by default so that the whole command,
interpreter start-ups included, stays inside 8 minutes):

  env             versions, the device, and its bf16 matmul rate measured (the MFU ceiling
                  actually reachable, beside the datasheet peak MFU is counted against)
  resnet50        benchmarks/bench_train_step.py: ResNet-50 at 224, bfloat16, batch 256,
                  train and eval, synthetic batches and the memory, folder and on-device
                  pipelines (Grain at 4 and 16 threads), and a device trace of the step
                  (jaxcls/launch/trace_summary.py: where the device time goes)
  torch_resnet50  benchmarks/bench_torch.py: the PyTorch twin (torchvision, channels-last,
                  bf16 autocast), torch.compile on and off
  finetune        benchmarks/bench_finetune.py: full, partial and frozen-backbone steps
  cifar10         python -m jaxcls.main on the CIFAR-10 JPEG folders at 224 from the real
                  EfficientNet-Lite0 weights (configs/cifar10_lite0.py): full fine-tuning,
                  partial and gradual unfreezing; wall time, images/s, test accuracy
  resnet50_more   float32 at batch 256 and bfloat16 at batch 512
  torch_more      the PyTorch twin in float32, eager
  zoo             ConvNeXt-T, EfficientNet-B0, MobileNetV2, ViT-S/16 (bfloat16, 224, batch 256)
  torch_zoo       their PyTorch twins (torchvision's; timm's ViT), torch.compile on and off

A part that does not fit in the time left is skipped and says so; a part that
fails or runs out of time keeps the rows it wrote. DIR receives suite.json
(every row, every part's status and command), suite.md (the tables, from
launch/gpu_suite_report.py) and suite.log (every part's output), rewritten
after each part. All parts share one persistent XLA compilation cache, so
autotuning results carry over between them (compile_s is cold only in the
first part that compiles a program).

`--smoke` runs every part on a CPU in seconds: a 4-channel CIFAR ResNet-20 at
16 pixels for every model, a few steps, and a CIFAR-10 folder of a few images
per class (from the shared archive when present, else drawn) trained from
scratch. CI runs it (tests/test_gpu_suite.py).
"""

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_suite_report  # pylint: disable=g-import-not-at-top,wrong-import-position

BENCHMARKS = ROOT / 'benchmarks'
SHARED_CIFAR = ROOT.parent / 'shared' / 'data' / 'cifar10-jpg' / 'cifar10-jpg.tar.gz'
TRACE_MAX_BYTES = 15 * 2**20  # The trace comes back beside suite.json up to this size.
CIFAR_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
                 'truck')


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What the parts measure: the GPU run's sizes, or the smoke run's."""
  image_size: int
  batch: int
  big_batch: int
  resnet: str
  width: int  # model.width of every JAX model (0: the architecture's own).
  zoo: tuple[str, ...]
  steps: int
  repeats: int
  warmup: int
  threads: tuple[int, ...]
  torch_compile: tuple[str, ...]
  finetune_strategies: tuple[str, ...]
  cifar_rows: tuple[str, ...]
  cifar_model: str  # Of the runs, for its synthetic step.
  cifar_image_size: int
  cifar_batch: int
  cifar_overrides: tuple[str, ...]
  cifar_per_class: int  # Train (and a fifth as many test) images per class; 0: all.
  matmul_size: int


FULL = Sizes(
    image_size=224, batch=256, big_batch=512, resnet='resnet50', width=0,
    zoo=('convnext_tiny', 'efficientnet_b0', 'mobilenet_v2', 'vit_small_patch16'), steps=6,
    repeats=3, warmup=3,
    threads=(4, 16), torch_compile=('on', 'off'),
    finetune_strategies=('full', 'partial', 'feature_extraction'),
    cifar_rows=('full', 'partial', 'gradual'), cifar_model='efficientnet_lite0',
    cifar_image_size=224, cifar_batch=256,
    cifar_overrides=('--config.train.num_epochs=3', '--config.data.epoch_examples=10000',
                     '--config.data.num_threads=16', '--config.evaluate.report_at_end=False'),
    cifar_per_class=0, matmul_size=8192)
SMOKE = Sizes(
    image_size=16, batch=8, big_batch=16, resnet='cifar_resnet20', width=4,
    zoo=('cifar_resnet20',), steps=2, repeats=2, warmup=1, threads=(1, 2),
    torch_compile=('off',), finetune_strategies=('full', 'partial', 'feature_extraction'),
    cifar_rows=('full', 'partial', 'gradual'), cifar_model='cifar_resnet20',
    cifar_image_size=16, cifar_batch=16,
    cifar_overrides=('--config.train.num_epochs=2', '--config.model.pretrained=',
                     '--config.model.name=cifar_resnet20', '--config.model.width=4',
                     '--config.data.image_size=16', '--config.data.augment.random_crop_padding=2',
                     '--config.data.mean=0.5,0.5,0.5', '--config.data.std=0.25,0.25,0.25',
                     '--config.train.batch_size=16', '--config.evaluate.report_at_end=False',
                     '--config.finetune.trainable_groups=1'),
    cifar_per_class=8, matmul_size=512)


@dataclasses.dataclass
class Suite:
  """The run: its sizes, where it writes, its deadline, and every part's record."""
  sizes: Sizes
  out: Path
  work: Path  # Scratch: data, workdirs, traces, the rows' JSON.
  deadline: float
  log: object
  results: dict
  cifar: str | None
  env: dict

  def left(self) -> float:
    return self.deadline - time.monotonic()

  def run(self, label: str, argv: list[str], timeout: float, env: dict | None = None) -> dict:
    """Runs `argv` (its output to the log and to stdout, lines prefixed with `label`) for at
    most `timeout` seconds; -> {command, returncode, seconds, timed_out}."""
    started = time.monotonic()
    command = ' '.join(argv)
    self._log(f'\n### {label}: {command}\n')
    process = subprocess.Popen(argv, cwd=ROOT, env={**self.env, **(env or {})},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    timed_out = threading.Event()

    def stop():
      timed_out.set()
      for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
          os.killpg(process.pid, sig)
        except ProcessLookupError:
          return
        time.sleep(3)

    timer = threading.Timer(max(timeout, 1), stop)
    timer.start()
    try:
      for line in process.stdout:
        self._log(f'[{label}] {line}')
      process.wait()
    finally:
      timer.cancel()
    seconds = time.monotonic() - started
    self._log(f'### {label}: exit {process.returncode} after {seconds:.1f} s'
              + (' (out of time)' if timed_out.is_set() else '') + '\n')
    return dict(label=label, command=command, returncode=process.returncode,
                seconds=round(seconds, 1), timed_out=timed_out.is_set())

  def _log(self, text: str) -> None:
    self.log.write(text)
    self.log.flush()
    sys.stdout.write(text)
    sys.stdout.flush()

  def python(self, *args: str) -> list[str]:
    return [sys.executable, *args]


def read_json(path: Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


# --------------------------------------------------------------------- parts ---

def jax_model_flags(s: Sizes) -> list[str]:
  return [f'--width={s.width}'] if s.width else []


def part_env(suite: Suite, timeout: float) -> dict:
  out = suite.work / 'env.json'
  call = suite.run('env', suite.python(str(Path(__file__).resolve().parent / 'gpu_env.py'),
                                       f'--matmul_size={suite.sizes.matmul_size}',
                                       f'--json={out}'), timeout)
  return dict(calls=[call], rows=read_json(out))


def _bench_steps(suite: Suite, label: str, timeout: float, models, dtypes, batches,
                 pipelines=('synthetic',), profile=False, image_size=None, num_classes=None,
                 evaluate=True) -> dict:
  s = suite.sizes
  out = suite.work / f'{label}.json'
  argv = suite.python(str(BENCHMARKS / 'bench_train_step.py'), f'--models={",".join(models)}',
                      f'--image_sizes={image_size or s.image_size}', f'--dtypes={",".join(dtypes)}',
                      f'--batch_sizes={",".join(map(str, batches))}', '--devices=1',
                      f'--pipelines={",".join(pipelines)}',
                      f'--num_threads={",".join(map(str, s.threads))}', f'--steps={s.steps}',
                      f'--repeats={s.repeats}', f'--warmup={s.warmup}', f'--json={out}',
                      *jax_model_flags(s))
  if profile:
    argv.append(f'--profile_dir={suite.work / "trace"}')
  if num_classes or s.width:  # The smoke run's models are the CIFAR ResNet's size: ten classes.
    argv.append(f'--num_classes={num_classes or 10}')
  if not evaluate:
    argv.append('--noeval')
  call = suite.run(label, argv, timeout)
  return dict(calls=[call], rows=read_json(out))


def part_resnet50(suite: Suite, timeout: float) -> dict:
  s = suite.sizes
  record = _bench_steps(suite, 'resnet50', timeout, [s.resnet], ['bfloat16'], [s.batch],
                        pipelines=('synthetic', 'memory', 'folder', 'device'), profile=True)
  traces = sorted((suite.work / 'trace').rglob('*.xplane.pb'))
  if traces and traces[-1].stat().st_size <= TRACE_MAX_BYTES:  # For a closer look later.
    shutil.copy(traces[-1], suite.out / 'trace.xplane.pb')
  return record


def part_resnet50_more(suite: Suite, timeout: float) -> dict:
  s = suite.sizes
  deadline = time.monotonic() + timeout
  first = _bench_steps(suite, 'resnet50_float32', timeout, [s.resnet], ['float32'], [s.batch])
  second = _bench_steps(suite, 'resnet50_big_batch', deadline - time.monotonic(), [s.resnet],
                        ['bfloat16'], [s.big_batch])
  return _combined(first, second)


def part_zoo(suite: Suite, timeout: float) -> dict:
  s = suite.sizes
  return _bench_steps(suite, 'zoo', timeout, s.zoo, ['bfloat16'], [s.batch])


def _bench_torch(suite: Suite, label: str, timeout: float, models, dtypes, compile_modes) -> dict:
  s = suite.sizes
  out = suite.work / f'{label}.json'
  argv = suite.python(str(BENCHMARKS / 'bench_torch.py'), f'--models={",".join(models)}',
                      f'--image_sizes={s.image_size}', f'--dtypes={",".join(dtypes)}',
                      f'--batch_sizes={s.batch}', f'--compile={",".join(compile_modes)}',
                      f'--steps={s.steps}', f'--repeats={s.repeats}', f'--warmup={s.warmup}',
                      f'--json={out}')
  if s.width:
    argv.append('--num_classes=10')
  call = suite.run(label, argv, timeout)
  return dict(calls=[call], rows=read_json(out))


def part_torch_resnet50(suite: Suite, timeout: float) -> dict:
  s = suite.sizes
  return _bench_torch(suite, 'torch_resnet50', timeout, [s.resnet], ['bfloat16'],
                      s.torch_compile)


def part_torch_more(suite: Suite, timeout: float) -> dict:
  s = suite.sizes
  return _bench_torch(suite, 'torch_more', timeout, [s.resnet], ['float32'], ['off'])


def part_torch_zoo(suite: Suite, timeout: float) -> dict:
  s = suite.sizes
  return _bench_torch(suite, 'torch_zoo', timeout, s.zoo, ['bfloat16'], s.torch_compile)


def part_finetune(suite: Suite, timeout: float) -> dict:
  s = suite.sizes
  out = suite.work / 'finetune.json'
  argv = suite.python(str(BENCHMARKS / 'bench_finetune.py'), f'--models={s.resnet}',
                      f'--strategies={",".join(s.finetune_strategies)}',
                      f'--image_size={s.image_size}', f'--batch_size={s.batch}',
                      '--dtype=bfloat16', f'--rounds={s.repeats}', f'--steps_per_round={s.steps}',
                      f'--json={out}')
  call = suite.run('finetune', argv, timeout)
  return dict(calls=[call], rows=read_json(out))


def part_cifar10(suite: Suite, timeout: float) -> dict:
  s = suite.sizes
  deadline = time.monotonic() + timeout
  root = cifar_folder(suite)
  # The same network's step on synthetic batches: what the runs' images/s would be if the
  # input pipeline and the loop cost nothing.
  model, size = (s.cifar_model, s.cifar_image_size)
  synthetic = _bench_steps(suite, 'cifar10_synthetic', min(90, timeout / 4), [model], ['bfloat16'],
                           [s.cifar_batch], image_size=size, num_classes=10, evaluate=False)
  calls, rows = list(synthetic['calls']), []
  scan_cache = None
  for row in s.cifar_rows:
    left = deadline - time.monotonic()
    if left < 20:
      calls.append(dict(label=f'cifar10_{row}', skipped=f'{left:.0f} s left in the part'))
      continue
    workdir = suite.work / 'cifar10' / row
    if workdir.exists():
      shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    if scan_cache is not None:  # Every row reads the same files: decode them once.
      shutil.copy(scan_cache, workdir / scan_cache.name)
    argv = suite.python('-m', 'jaxcls.main', f'--config=configs/cifar10_lite0.py:{row}',
                        f'--workdir={workdir}', f'--config.data.source=folder:{root}',
                        *s.cifar_overrides)
    call = suite.run(f'cifar10_{row}', argv, left)
    calls.append(call)
    results = read_json(workdir / 'results.json')
    if (workdir / 'data_scan.json').is_file():
      scan_cache = workdir / 'data_scan.json'
    if results is not None:
      rows.append(cifar_row(row, results, call['seconds']))
  return dict(calls=calls, rows=rows, data=str(root),
              synthetic=((synthetic['rows'] or {}).get('steps') or [None])[0])


def cifar_row(row: str, results: dict, wall_seconds: float) -> dict:
  timings = results['timings']
  return dict(strategy=row, model=results['config']['model']['name'],
              pretrained=(results.get('pretrained') or {}).get('tag'),
              image_size=results['config']['data']['image_size'],
              batch_size=results['config']['train']['batch_size'],
              epochs=len(results['history']),
              images_per_epoch=results['config']['data']['epoch_examples']
              or results['num_examples']['train'],
              num_examples=results['num_examples'], test_accuracy=results['test']['accuracy'],
              best_val_accuracy=results['best_val']['accuracy'], best_epoch=results['best_epoch'],
              wall_seconds=wall_seconds, total_seconds=timings['total_seconds'],
              train_seconds=timings['train_seconds'],
              first_step_seconds=timings['first_step_seconds'],
              train_images_per_second=timings['train_images_per_second'],
              phases=results['finetune']['phases'], device=results['devices']['kind'])


def _combined(*parts: dict) -> dict:
  steps = [r for p in parts for r in ((p['rows'] or {}).get('steps') or [])]
  return dict(calls=[c for p in parts for c in p['calls']],
              rows=dict(steps=steps, pipelines=[], scaling=[]))


@dataclasses.dataclass(frozen=True)
class Part:
  name: str
  run: Callable[[Suite, float], dict]
  budget_s: float  # The most this part may take in a full run.
  min_s: float  # Not started with less than this left.


PARTS = (
    Part('env', part_env, 30, 10),
    Part('resnet50', part_resnet50, 130, 60),
    Part('torch_resnet50', part_torch_resnet50, 130, 50),
    Part('finetune', part_finetune, 80, 30),
    Part('cifar10', part_cifar10, 200, 60),
    Part('resnet50_more', part_resnet50_more, 100, 40),
    Part('torch_more', part_torch_more, 60, 25),
    Part('zoo', part_zoo, 120, 40),
    Part('torch_zoo', part_torch_zoo, 200, 40),
)


# ---------------------------------------------------------------------- data ---

def cifar_folder(suite: Suite) -> Path:
  """A folder with train/CLASS/*.jpg and test/CLASS/*.jpg: --cifar as given (a folder, or the
  archive unpacked, all of it or `cifar_per_class` images per class), or drawn images."""
  s = suite.sizes
  target = suite.work / 'cifar10-jpg'
  if (target / 'train').is_dir():
    return target
  source = Path(suite.cifar) if suite.cifar else None
  if source is not None and source.is_dir():
    return source
  if source is not None and source.is_file():
    if s.cifar_per_class:
      _unpack_some(source, suite.work, s.cifar_per_class)
    else:
      subprocess.run(['tar', 'xzf', str(source), '-C', str(suite.work)], check=True)
    return target
  return _drawn_folder(target, s.cifar_per_class or 8)


def _unpack_some(archive: Path, into: Path, per_class: int) -> None:
  """The first `per_class` train and `per_class // 5 + 1` test images of each class."""
  wanted = {'train': per_class, 'test': per_class // 5 + 1}
  counts = {}
  with tarfile.open(archive) as tar:
    for member in tar:
      parts = Path(member.name).parts  # cifar10-jpg/SPLIT/CLASS/N.jpg
      if not member.isfile() or len(parts) != 4 or parts[1] not in wanted:
        continue
      key = parts[1:3]
      if counts.get(key, 0) < wanted[parts[1]]:
        counts[key] = counts.get(key, 0) + 1
        tar.extract(member, into, filter='data')
      if len(counts) == 2 * len(CIFAR_CLASSES) and all(
          counts[k] >= wanted[k[0]] for k in counts):
        return


def _drawn_folder(target: Path, per_class: int) -> Path:
  """Ten classes of 32x32 JPEGs, each a noisy plain colour: a stand-in where the archive is
  absent, for the smoke run only."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, count in (('train', per_class), ('test', per_class // 5 + 1)):
    for index, name in enumerate(CIFAR_CLASSES):
      folder = target / split / name
      folder.mkdir(parents=True, exist_ok=True)
      colour = np.asarray([index * 25, 255 - index * 25, (index * 70) % 256])
      for i in range(count):
        pixels = np.clip(colour + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f'{i:04d}.jpg', quality=90)
  return target


# ---------------------------------------------------------------------- main ---

def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', required=True, help='Where suite.json, suite.md, suite.log go.')
  parser.add_argument('--budget_s', type=float, default=470,
                      help='Seconds for all the parts together (default 470).')
  parser.add_argument('--parts', default='',
                      help=f'Comma-separated subset of: {",".join(p.name for p in PARTS)}.')
  parser.add_argument('--cifar', default=str(SHARED_CIFAR) if SHARED_CIFAR.is_file() else '',
                      help='CIFAR-10 JPEGs: the archive of ../shared/data/cifar10-jpg or an '
                      'unpacked folder (default: the shared archive where present).')
  parser.add_argument('--smoke', action='store_true', help='Every part in seconds, on a CPU.')
  parser.add_argument('--merge', nargs='+', default=None, metavar='SUITE_JSON',
                      help='Write one report of these suite.json files (no measuring).')
  args = parser.parse_args(argv)
  known = {p.name for p in PARTS}
  unknown = set(filter(None, args.parts.split(','))) - known
  if unknown:
    parser.error(f'--parts: unknown {sorted(unknown)}; known: {", ".join(p.name for p in PARTS)}')
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  if args.merge:
    results = gpu_suite_report.merge([read_json(Path(p)) for p in args.merge])
    write_outputs(out, results)
    print(gpu_suite_report.markdown(results))
    return 0
  started = time.monotonic()
  chosen = [p for p in PARTS if not args.parts or p.name in args.parts.split(',')]
  sizes = SMOKE if args.smoke else FULL
  results = dict(meta=dict(
      started=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
      command=' '.join(['python launch/gpu_suite.py', *(argv if argv is not None
                                                        else sys.argv[1:])]),
      smoke=args.smoke, budget_s=args.budget_s, sizes=dataclasses.asdict(sizes)), parts={})
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  env.setdefault('JAX_COMPILATION_CACHE_DIR', str(Path(tempfile.gettempdir())
                                                  / 'jaxcls-gpu-suite-xla-cache'))
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
  if args.smoke:
    env.setdefault('JAX_PLATFORMS', 'cpu')
  with tempfile.TemporaryDirectory(prefix='gpu_suite_') as work, \
      open(out / 'suite.log', 'w') as log:
    suite = Suite(sizes=sizes, out=out, work=Path(work), deadline=started + args.budget_s,
                  log=log, results=results, cifar=args.cifar or None, env=env)
    for part in chosen:
      left = suite.left()
      budget = part.budget_s if not args.smoke else 600
      if left < min(part.min_s, budget):
        results['parts'][part.name] = dict(status='skipped',
                                           reason=f'{left:.0f} s of the budget left')
        suite._log(f'\n### {part.name}: skipped, {left:.0f} s of the budget left\n')  # pylint: disable=protected-access
        continue
      part_started = time.monotonic()
      try:
        record = part.run(suite, min(budget, left))
      except Exception as e:  # pylint: disable=broad-except  # The other parts still run.
        record = dict(calls=[], rows=None, error=f'{type(e).__name__}: {e}')
      record['seconds'] = round(time.monotonic() - part_started, 1)
      record['status'] = status(record)
      results['parts'][part.name] = record
      results['meta']['seconds'] = round(time.monotonic() - started, 1)
      write_outputs(out, results)
  results['meta']['seconds'] = round(time.monotonic() - started, 1)
  write_outputs(out, results)
  print('\n' + gpu_suite_report.markdown(results))
  failed = [n for n, r in results['parts'].items() if r['status'] == 'failed']
  return 1 if failed else 0


def status(record: dict) -> str:
  calls = record['calls']
  if record.get('error') or any(c.get('returncode') not in (0, None) and not c.get('timed_out')
                                for c in calls):
    return 'failed'
  if any(c.get('timed_out') or c.get('skipped') for c in calls):
    return 'partial'
  return 'ok'


def write_outputs(out: Path, results: dict) -> None:
  (out / 'suite.json').write_text(json.dumps(results, indent=1, default=str) + '\n')
  (out / 'suite.md').write_text(gpu_suite_report.markdown(results) + '\n')


if __name__ == '__main__':
  sys.exit(main())
