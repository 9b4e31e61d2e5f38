"""Where a CPU train step's time goes: each XLA thunk of the trainer's step, with its HLO.

    python benchmarks/profile_cpu_step.py resnet18                  # 224px, batch 16
    python benchmarks/profile_cpu_step.py efficientnet_b0 --image_size=160 --top=40
    python benchmarks/profile_cpu_step.py resnet18 --default_options  # XLA's own CPU options

A CPU `jax.profiler` trace has no device plane for `jaxcls.launch.trace_summary`, but
XLA:CPU's thunk executor names each kernel it runs on its threads. This traces a few
steps of the step `jaxcls bench` times (`launch.bench.build`), sums each thunk's time,
and names what it runs from the compiled HLO: a fusion's convolution or dot with its
shapes (a weight gradient shows as a convolution whose output is the kernel's shape, a
transposed activation as a `copy` fusion). Thunks on the two threads overlap, so their
sum can exceed the step's wall time; some of the Eigen convolutions that jaxcls's options
(`jaxcls.models.conv.compiler_options`) select are not traced as thunks, so the wall time
is the figure to compare, and benchmarks/bench_convs.py times the convolutions alone.
"""

import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax
from absl import app, flags

from jaxcls.config import default_config
from jaxcls.launch import bench
from jaxcls.models import conv

_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Input side.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Batch size.')
_STEPS = flags.DEFINE_integer('traced_steps', 2, 'Traced steps (after two untraced ones).')
_TOP = flags.DEFINE_integer('top', 25, 'Thunks listed.')
_DEFAULT_OPTIONS = flags.DEFINE_bool('default_options', False,
                                     "Compile with XLA's default CPU options instead of "
                                     "jaxcls's (conv.compiler_options).")

_HEAVY = re.compile(r' (convolution|dot|reduce-window|select-and-scatter|reduce|scatter|gather)\(')


def _computations(hlo: str) -> tuple[dict[str, list[str]], dict[str, str]]:
  """(computation name -> its lines, instruction name -> its line) of an HLO module's text."""
  bodies, lines_of, current = {}, {}, None
  for line in hlo.splitlines():
    header = re.match(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$', line)
    if header:
      current = bodies.setdefault(header.group(1), [])
    elif current is not None:
      current.append(line.strip())
      named = re.match(r'(?:ROOT )?%?([\w.\-]+) = ', line.strip())
      if named:
        lines_of[named.group(1)] = line.strip()
  return bodies, lines_of


def describe(name: str, bodies: dict, lines_of: dict) -> tuple[str, str]:
  """(category, description) of the thunk `name`: what its fusion computes, with shapes."""
  line = lines_of.get(name)
  if line is None:
    return 'other', ''
  shape = line.split(' = ', 1)[1].split(' ', 1)[0]
  called = re.search(r'calls=%?([\w.\-]+)', line)
  body = bodies.get(called.group(1), []) if called else [line]
  heavy = [re.sub(r'^(ROOT )?%[\w.\-]+ = ', '', l) for l in body if _HEAVY.search(l)]
  kind = next((k for k in ('convolution', 'dot', 'reduce-window', 'select-and-scatter',
                           'reduce') if any(f' {k}(' in f' {h}' for h in heavy)),
              'copy' if 'copy' in name or 'transpose' in name else 'elementwise')
  return kind, f'-> {shape} ' + ' ; '.join(h[:150] for h in heavy[:2])


def main(argv):
  model = argv[1] if len(argv) > 1 else 'resnet18'
  case = bench.Case(model, _IMAGE_SIZE.value, 'float32', _BATCH_SIZE.value, 1)
  if _DEFAULT_OPTIONS.value:
    conv._known_cpu_options = lambda: None  # pylint: disable=protected-access
  state, train_fn, *_, batch, _, _ = bench.build(case, default_config(), 1000)
  compiled = train_fn.lower(state, batch).compile()
  bodies, lines_of = _computations(compiled.as_text())
  for _ in range(2):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  trace_dir = tempfile.mkdtemp()
  started = time.perf_counter()
  jax.profiler.start_trace(trace_dir)
  for _ in range(_STEPS.value):
    state, _ = compiled(state, batch)
    jax.block_until_ready(state)
  jax.profiler.stop_trace()
  step_ms = (time.perf_counter() - started) / _STEPS.value * 1e3
  trace_file = glob.glob(f'{trace_dir}/plugins/profile/*/*.trace.json.gz')[0]
  with gzip.open(trace_file) as f:
    events = json.load(f)['traceEvents']
  per_thunk = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and not e['name'].startswith(('ThunkExecutor', '$', 'Slinky',
                                                         'PjitFunction')):
      per_thunk[e['name']] += e['dur'] / 1e3 / _STEPS.value
  described = {name: describe(name, bodies, lines_of) for name in per_thunk}
  per_kind = collections.Counter()
  for name, ms in per_thunk.items():
    per_kind[described[name][0]] += ms
  print(f'{model} {case.image_size}px batch {case.batch_size}, '
        f'{"XLA defaults" if _DEFAULT_OPTIONS.value else "jaxcls options"}: '
        f'{step_ms:.0f} ms a traced step; thunks {sum(per_thunk.values()):.0f} ms')
  print('by kind (ms):', ', '.join(f'{k} {v:.0f}' for k, v in per_kind.most_common()))
  for name, ms in per_thunk.most_common(_TOP.value):
    print(f'{ms:8.1f}  {described[name][0]:<12} {name:<28} {described[name][1][:200]}')


if __name__ == '__main__':
  app.run(main)
