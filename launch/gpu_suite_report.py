"""The tables of launch/gpu_suite.py: its suite.json as Markdown, and several runs' as one.

Tables, each from the parts that measured it: JAX against PyTorch (compiled
and eager) per model, dtype and batch, with the ratios; MFU, compile time and
peak memory; the input pipelines against the synthetic step; where the device
time of a traced step goes; the fine-tuning strategies' step costs; CIFAR-10
fine-tuned from real weights; and what each part did (status, seconds, why).
"""

import statistics


def _fmt(value, spec='.1f', missing='-'):
  if value is None:
    return missing
  if isinstance(value, str):
    return value
  return format(value, spec)


def _ratio(a, b):
  return f'{a / b:.2f}x' if a and b else '-'


def _percent(fraction):
  return '-' if fraction is None else f'{100 * fraction:.1f}%'


def _table(header: list[str], rows: list[list]) -> list[str]:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return lines


def _parts(results: dict, kind: str) -> list[tuple[str, dict]]:
  """(name, record) of every part of this kind ('resnet50', or 'resnet50#2' from a merge)."""
  return [(name, record) for name, record in results.get('parts', {}).items()
          if name.split('#')[0] == kind]


def _rows(results: dict, kinds: tuple[str, ...], key: str | None = None) -> list[dict]:
  out = []
  for kind in kinds:
    for name, record in _parts(results, kind):
      rows = record.get('rows')
      if isinstance(rows, dict):
        rows = rows.get(key or 'steps') or []
      for row in rows or []:
        out.append(dict(row, part=name))
  return out


def _run_label(part: str) -> str:
  return f' (run {part.split("#")[1]})' if '#' in part else ''


JAX_STEP_PARTS = ('resnet50', 'resnet50_more', 'zoo')
TORCH_PARTS = ('torch_resnet50', 'torch_more', 'torch_zoo')
TORCH_TWINS = dict(zip(JAX_STEP_PARTS, TORCH_PARTS))  # The part that times the same cases.


def step_tables(results: dict) -> list[str]:
  jax_rows = _rows(results, JAX_STEP_PARTS)
  torch_rows = _rows(results, TORCH_PARTS)
  if not jax_rows and not torch_rows:
    return []
  key = lambda r: (r['model'], r['image_size'], r['dtype'], r['batch_size'])  # noqa: E731
  keys = list(dict.fromkeys([key(r) for r in jax_rows] + [key(r) for r in torch_rows]))

  def torch_of(k, variant, jax_row):
    """The torch row of the same case, from the JAX part's twin in the same run if any."""
    found = [r for r in torch_rows if key(r) == k and r['variant'].startswith(variant)]
    if jax_row is not None:
      kind, _, run = jax_row['part'].partition('#')
      twin = TORCH_TWINS[kind] + (f'#{run}' if run else '')
      found = [r for r in found if r['part'] == twin] or found
    return found[-1] if found else None

  throughput, costs = [], []
  for k in keys:
    jax_found = [r for r in jax_rows if key(r) == k] or [None]
    for j in jax_found:
      compiled, eager = torch_of(k, 'compile', j), torch_of(k, 'eager', j)
      train = j and j['train_images_per_second']
      throughput.append([
          k[0] + (_run_label(j['part']) if j else ''), k[1], k[2], k[3],
          _fmt(train), _fmt(compiled and compiled['train_images_per_second']),
          _fmt(eager and eager['train_images_per_second']),
          _ratio(train, compiled and compiled['train_images_per_second']),
          _ratio(train, eager and eager['train_images_per_second']),
          _fmt(j and j['eval_images_per_second']),
          _fmt(compiled and compiled['eval_images_per_second']),
          _fmt(eager and eager['eval_images_per_second'])])
      costs.append([
          k[0] + (_run_label(j['part']) if j else ''), k[2], k[3],
          _fmt(j and j['train_flops_per_image'] / 1e9, '.3g'),
          _percent(j and j['mfu']), _percent(compiled and compiled['mfu']),
          _percent(eager and eager['mfu']), _fmt(j and j['compile_seconds']),
          _fmt(compiled and compiled['compile_seconds']), _fmt(j and j['peak_memory_mib'], '.0f'),
          _fmt(compiled and compiled['peak_memory_mib'], '.0f'),
          _fmt(eager and eager['peak_memory_mib'], '.0f')])
  out = ['### Train and eval steps: jaxcls against PyTorch', '',
         'images/s on synthetic batches already on the device (median of repeats, warm-up '
         'excluded); PyTorch: torchvision\'s model, channels-last, bf16 autocast; '
         'compiled = `torch.compile`.', '']
  out += _table(['model', 'size', 'dtype', 'batch', 'jaxcls train', 'torch compiled',
                 'torch eager', 'jaxcls / compiled', 'jaxcls / eager', 'jaxcls eval',
                 'compiled eval', 'eager eval'], throughput)
  out += ['', 'MFU: the train step\'s FLOPs (XLA\'s count, kernel taps on padding left out; the '
          'torch rows scaled to the same convention) at the measured rate, over the device\'s '
          'datasheet peak. Compile: the first steps\' seconds (torch: warm-up steps, '
          'compilation included).', '']
  out += _table(['model', 'dtype', 'batch', 'GFLOP/img', 'jaxcls MFU', 'compiled MFU',
                 'eager MFU', 'jaxcls compile s', 'torch.compile s', 'jaxcls peak MiB',
                 'compiled peak MiB', 'eager peak MiB'], costs)
  return out


def pipeline_table(results: dict) -> list[str]:
  rows = _rows(results, JAX_STEP_PARTS, 'pipelines')
  if not rows:
    return []
  body = [[p['pipeline'] + _run_label(p['part']), p['model'], p['dtype'], p['batch_size'],
           '-' if p['pipeline'] == 'device' else p['num_threads'],
           _fmt(p['input_images_per_second']), _fmt(p['synthetic_images_per_second']),
           _fmt(p['end_to_end_images_per_second']), _fmt(p['end_to_end_vs_synthetic'], '.2f')]
          for p in rows]
  return ['### Input pipelines against the synthetic step', '',
          'memory: Grain over uint8 arrays (digits resized per example); folder: Grain over '
          'JPEGs decoded and resized per example; device: `data.on_device` (gathered, cropped '
          'and flipped on the device). e2e / synthetic: the step fed by the pipeline over the '
          'same step on a batch already on the device, timed in turn (1.00: the pipeline costs '
          'nothing).', ''] + _table(
              ['pipeline', 'model', 'dtype', 'batch', 'threads', 'input only img/s',
               'synthetic img/s', 'end to end img/s', 'e2e / synthetic'], body)


def trace_table(results: dict) -> list[str]:
  out = []
  for row in _rows(results, JAX_STEP_PARTS):
    trace = row.get('trace') or {}
    for plane, device in (trace.get('devices') or {}).items():
      modules = device.get('modules') or {}
      out += [f'### Where the device time goes: {row["model"]} {row["dtype"]} batch '
              f'{row["batch_size"]}{_run_label(row["part"])} ({plane})', '',
              f'{modules.get("count", "?")} module runs over {_fmt(modules.get("span_ms"))} ms, '
              f'device busy {_percent(modules.get("busy_fraction"))}; by category: '
              + ', '.join(f'{k} {_percent(v["fraction"])}'
                          for k, v in device.get('categories', {}).items()), '']
      out += _table(['op', 'share', 'ms', 'count'],
                    [[f'`{op["name"][:80]}`', _percent(op['fraction']), _fmt(op['ms'], '.2f'),
                      op['count']] for op in device.get('top_ops', [])[:10]])
      out.append('')
  return out


def finetune_table(results: dict) -> list[str]:
  rows = _rows(results, ('finetune',))
  if not rows:
    return []
  return ['### Fine-tuning strategies: train-step cost', '',
          'Same model and batch; frozen groups get no backward pass (benchmarks/bench_finetune.py, '
          'strategies interleaved round after round).', ''] + _table(
              ['model', 'size', 'dtype', 'batch', 'strategy', 'step ms', 'img/s', 'GFLOP/step',
               'time / full', 'FLOPs / full'],
              [[r['model'] + _run_label(r['part']), r['image_size'], r['dtype'], r['batch_size'],
                r['strategy'], _fmt(r['step_seconds'] * 1e3), _fmt(r['images_per_second']),
                _fmt(r['flops'] / 1e9, '.0f'), _fmt(r['time_vs_full'], '.2f'),
                _fmt(r['flops_vs_full'], '.2f')] for r in rows])


def cifar_table(results: dict) -> list[str]:
  body = []
  for name, record in _parts(results, 'cifar10'):
    synthetic = (record.get('synthetic') or {}).get('train_images_per_second')
    for r in record.get('rows') or []:
      rate = r['train_images_per_second']
      body.append([r['strategy'] + _run_label(name), r['pretrained'] or r['model'],
                   r['image_size'], r['batch_size'], f'{r["epochs"]} x {r["images_per_epoch"]}',
                   _fmt(r['wall_seconds']), _fmt(r['train_seconds']), _fmt(rate),
                   _fmt(rate / synthetic, '.2f') if rate and synthetic else '-',
                   _fmt(r['first_step_seconds']), _fmt(r['best_val_accuracy'], '.4f'),
                   _fmt(r['test_accuracy'], '.4f')])
  if not body:
    return []
  return ['### CIFAR-10 (JPEG folders) fine-tuned from real ImageNet weights', '',
          '`python -m jaxcls.main --config configs/cifar10_lite0.py:ROW` (host Grain pipeline: '
          'decode, resize 32 -> 224, random crop and flip per example); wall: the whole command '
          '(start-up, data scan, compilation, validation each epoch, test of the best '
          'checkpoint); train img/s leaves out the first (compiling) step and counts the '
          'recompilations of a new phase; vs synthetic: over the same network\'s full '
          'fine-tuning step on batches already on the device (benchmarks/bench_train_step.py).',
          ''] + _table(['strategy', 'weights', 'size', 'batch', 'epochs x images', 'wall s',
                        'train s', 'train img/s', 'vs synthetic', 'first step s', 'best val acc',
                        'test acc'], body)


def status_table(results: dict) -> list[str]:
  body = []
  for name, record in results.get('parts', {}).items():
    notes = [record.get('reason'), record.get('error')]
    for call in record.get('calls', []):
      if call.get('skipped'):
        notes.append(f'{call["label"]}: skipped, {call["skipped"]}')
      elif call.get('timed_out'):
        notes.append(f'{call["label"]}: out of time after {call["seconds"]} s')
      elif call.get('returncode'):
        notes.append(f'{call["label"]}: exit {call["returncode"]}')
    body.append([name, record['status'], _fmt(record.get('seconds')),
                 '; '.join(n for n in notes if n) or ''])
  return ['### Parts', ''] + _table(['part', 'status', 'seconds', 'note'], body)


def header(results: dict) -> list[str]:
  runs = results.get('runs') or [results]
  out = ['## jaxcls GPU suite', '']
  for i, run in enumerate(runs, 1):
    meta = run.get('meta', {})
    env = ((run.get('parts', {}).get('env') or {}).get('rows')) or {}
    versions = env.get('versions', {})
    smi = env.get('nvidia_smi') or {}
    device = ', '.join(dict.fromkeys(env.get('devices', []))) or '?'
    prefix = f'Run {i}: ' if len(runs) > 1 else ''
    out.append(
        f'- {prefix}{meta.get("started", "?")}, `{meta.get("command", "?")}`, '
        f'{_fmt(meta.get("seconds"), ".0f")} s; {device}'
        + (f' (driver {smi.get("driver_version")}, {smi.get("memory.total")})' if smi else '')
        + f', {env.get("cpu_count", "?")} CPU cores; jax {versions.get("jax")}, flax '
        f'{versions.get("flax")}, torch {versions.get("torch")}, torchvision '
        f'{versions.get("torchvision")}; measured bf16 matmul '
        f'{_fmt(env.get("matmul_tflops"), ".3g")} TFLOP/s ({env.get("matmul_size", "?")}^3)'
        + (' (smoke run: tiny models on a CPU, figures mean nothing)' if meta.get('smoke')
           else ''))
  return out + ['']


def markdown(results: dict) -> str:
  sections = [header(results), step_tables(results), pipeline_table(results),
              trace_table(results), finetune_table(results), cifar_table(results),
              status_table(results)]
  return '\n'.join(line for section in sections if section for line in section + [''])


def merge(runs: list[dict]) -> dict:
  """Several suite.json into one: each part keeps its name in the first run it appears in,
  then gets '#N' (N: the run's number), so the tables show both side by side."""
  merged = dict(runs=runs, parts={})
  for number, run in enumerate(runs, 1):
    for name, record in run.get('parts', {}).items():
      merged['parts'][name if name not in merged['parts'] else f'{name}#{number}'] = record
  merged['meta'] = dict(seconds=statistics.fsum(r.get('meta', {}).get('seconds') or 0
                                                for r in runs))
  return merged
