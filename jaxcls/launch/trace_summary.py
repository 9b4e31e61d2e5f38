"""Where a traced train step spends the device's time, from a `jax.profiler` trace.

    python -m jaxcls.launch.trace_summary DIR_OR_XPLANE_PB [--top 15]

Reads the `.xplane.pb` that `jax.profiler.start_trace`/`stop_trace` wrote and,
for each accelerator plane (`/device:GPU:0`, `/device:TPU:0`), sums the time of
its XLA modules (one per step) and ops: how busy the device was between the
first and the last module (a device idle between steps waits on the host),
the time per category of op (convolutions, matmuls, fusions, copies and
transposes, reductions, collectives) and the ops that cost the most. A CPU
trace has no device plane: the summary says so and lists the planes it saw.

`jaxcls bench --profile_dir` writes the summary of its
traced steps into its JSON; `launch/gpu_suite.py` prints it.
"""

import collections
import json
import re
import sys
from pathlib import Path

# First match wins: a cuDNN convolution fused with its bias is a convolution.
CATEGORIES = (
    ('convolution', re.compile(r'conv|cudnn', re.I)),
    ('matmul', re.compile(r'gemm|dot|cublas|matmul|triton_gemm', re.I)),
    ('collective', re.compile(r'all-reduce|all-gather|reduce-scatter|all-to-all|nccl|'
                              r'collective', re.I)),
    ('copy/transpose', re.compile(r'copy|transpose|memcpy|memset|bitcast', re.I)),
    ('reduction', re.compile(r'reduce', re.I)),
    ('fusion', re.compile(r'fusion|loop_|input_', re.I)),
)


def category(op_name: str) -> str:
  return next((name for name, pattern in CATEGORIES if pattern.search(op_name)), 'other')


def find_xplane(path: str | Path) -> Path:
  """The newest `.xplane.pb` under `path` (or `path` itself)."""
  path = Path(path)
  if path.is_file():
    return path
  found = sorted(path.rglob('*.xplane.pb'), key=lambda p: p.stat().st_mtime)
  if not found:
    raise FileNotFoundError(f'no .xplane.pb under {path}')
  return found[-1]


def _events(line) -> list[tuple[str, float, float]]:
  return [(e.name, e.start_ns, e.duration_ns) for e in line.events]


def summarize(path: str | Path, top: int = 15) -> dict:
  """{'planes': [...], 'devices': {plane: summary}}; see the module docstring."""
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  xplane = find_xplane(path)
  data = ProfileData.from_file(str(xplane))
  out = dict(file=str(xplane), bytes=xplane.stat().st_size, planes=[], devices={})
  for plane in data.planes:
    lines = {line.name: _events(line) for line in plane.lines}
    out['planes'].append(dict(name=plane.name, lines={n: len(e) for n, e in lines.items()}))
    if not plane.name.startswith(('/device:GPU', '/device:TPU')):
      continue
    out['devices'][plane.name] = _device_summary(lines, top)
  if not out['devices']:
    out['note'] = 'no accelerator plane in this trace (a CPU run): nothing to summarise'
  return out


def _device_summary(lines: dict[str, list], top: int) -> dict:
  modules = lines.get('XLA Modules', [])
  ops = lines.get('XLA Ops')
  if ops is None:  # Older traces: the kernels on the streams.
    ops = [e for name, events in lines.items() if name.startswith('Stream') for e in events]
  summary = dict(lines={name: dict(events=len(events), busy_ms=sum(e[2] for e in events) / 1e6)
                        for name, events in lines.items()})
  if modules:
    first = min(e[1] for e in modules)
    last = max(e[1] + e[2] for e in modules)
    busy = sum(e[2] for e in modules)
    summary['modules'] = dict(
        count=len(modules), span_ms=(last - first) / 1e6, busy_ms=busy / 1e6,
        busy_fraction=busy / max(last - first, 1),
        names=collections.Counter(_module_name(e[0]) for e in modules).most_common(5))
  total = sum(e[2] for e in ops) or 1
  by_category = collections.defaultdict(float)
  by_name = collections.defaultdict(lambda: [0.0, 0])
  for name, _, duration in ops:
    by_category[category(name)] += duration
    by_name[name][0] += duration
    by_name[name][1] += 1
  summary['op_ms'] = total / 1e6
  summary['categories'] = {k: dict(ms=v / 1e6, fraction=v / total)
                           for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])}
  summary['top_ops'] = [dict(name=name[:120], ms=ms / 1e6, count=count, fraction=ms / total)
                        for name, (ms, count) in sorted(by_name.items(),
                                                        key=lambda kv: -kv[1][0])[:top]]
  return summary


def _module_name(name: str) -> str:
  return re.sub(r'\(\d+\)$', '', name)


def format_summary(summary: dict, top: int = 8) -> str:
  """A few lines per device: busy fraction, time per category, the costliest ops."""
  if not summary.get('devices'):
    return f'# trace: {summary.get("note", "no device plane")}'
  out = []
  for plane, device in summary['devices'].items():
    modules = device.get('modules')
    if modules:
      out.append(f'# trace {plane}: {modules["count"]} module runs over {modules["span_ms"]:.1f} '
                 f'ms, device busy {100 * modules["busy_fraction"]:.1f}%')
    out.append('#   by category: ' + ', '.join(
        f'{k} {100 * v["fraction"]:.1f}%' for k, v in device['categories'].items()))
    for op in device['top_ops'][:top]:
      out.append(f'#   {100 * op["fraction"]:5.1f}% {op["ms"]:8.2f} ms x{op["count"]:<4} '
                 f'{op["name"]}')
  return '\n'.join(out)


def main(argv):
  top = int(argv[argv.index('--top') + 1]) if '--top' in argv else 15
  summary = summarize(argv[1], top)
  print(format_summary(summary, top))
  print(json.dumps(summary, indent=1)[:4000])


if __name__ == '__main__':
  main(sys.argv)
