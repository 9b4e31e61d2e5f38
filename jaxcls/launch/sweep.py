"""Sweeps: many trainings of one config, each a separate `python -m jaxcls.main` process.

    jaxcls sweep --config default.py --sweep lr_width --root runs/lr_width \\
        [--parallel 2] [--set train.num_epochs=3 ...]
    jaxcls summarize runs/lr_width

(`python -m jaxcls sweep` without the console script; the command line is
`jaxcls.launch.sweep_command`, Optuna's search `jaxcls.launch.optuna_search`.)
--config is a file or a shipped config's name (jaxcls/configs); --sweep a file or a
shipped sweep's name (jaxcls/launch/sweeps: lr_width, hparam_grid, random_search, kfold).

A sweep file is data: a Python file whose `get_sweep()` (or `get_sweep(ARG)` for
`--sweep FILE:ARG`) returns a dict with any of

    grid:       {field: [values]}: every combination (first axis outermost).
                A key without a dot names a set of variants instead:
                {'rung': {'none': {field: value}, 'mixup': {...}}}.
    random:     {field: ('choice', [values]) | ('uniform', low, high) |
                 ('log_uniform', low, high) | ('int', low, high)}  (int: both ends in)
    num_trials: random draws (default 1), the same draws for every grid point
                (so each random configuration is seen on every fold of a k-fold grid).
    seed:       of the random draws (default 0); trial i's draws do not depend on
                num_trials, so raising it adds trials and keeps the old ones.
    fixed:      {field: value} set in every trial.

A field is a dotted config path ('optimizer.learning_rate'), or 'config_arg':
the ARG of `--config FILE:ARG` (e.g. a row of configs/finetune_digits.py).

Each trial gets ROOT/NAME/ (NAME from its values): `trial_config.py` (the base
config with the trial's overrides, runnable by hand with `python -m
jaxcls.main --config ROOT/NAME/trial_config.py --workdir ROOT/NAME`), the
trainer's own outputs (config.json, results.json, checkpoints/), `log.txt` and
`trial.json` (values, command, status, wall time, the log's tail on failure).
Re-running the same command skips finished trials (results.json present) and
starts the others again, which resume from their latest checkpoint. Trials
share one persistent XLA compilation cache (ROOT/.jax_cache), so the programs
of a model compile once per sweep, not once per trial.
"""

import ast
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from jaxcls.cli import config_files

# The folder holding the jaxcls package, put on the trials' PYTHONPATH: a checkout that was
# never installed runs its trials from its own code.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
SHIPPED_SWEEPS = Path(__file__).resolve().parent / 'sweeps'
CONFIG_ARG = 'config_arg'
DISTRIBUTIONS = ('choice', 'uniform', 'log_uniform', 'int')
LOG_TAIL_LINES = 30
TRIAL_JSON = 'trial.json'
SWEEP_JSON = 'sweep.json'


# ------------------------------------------------------------------ trials ---

def load_sweep(spec: str) -> dict:
  """`get_sweep()` of FILE, or `get_sweep(ARG)` of FILE:ARG."""
  path, _, arg = spec.partition(':')
  if not Path(path).is_file():
    shipped = SHIPPED_SWEEPS / (Path(path).stem + '.py')
    if Path(path).parent.name not in ('', 'sweeps') or not shipped.is_file():
      names = ', '.join(sorted(p.stem for p in SHIPPED_SWEEPS.glob('[!_]*.py')))
      raise SystemExit(f'--sweep {spec}: no such file (shipped sweeps: {names})')
    path = str(shipped)
  module_spec = importlib.util.spec_from_file_location(f'_jaxcls_sweep_{Path(path).stem}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_sweep(arg) if arg else module.get_sweep()


def check_sweep(sweep: dict) -> None:
  """Raises ValueError naming the first malformed part of a sweep dict."""
  unknown = set(sweep) - {'grid', 'random', 'num_trials', 'seed', 'fixed', 'metric'}
  if unknown:
    raise ValueError(f'sweep: unknown keys {sorted(unknown)} (known: grid, random, num_trials, '
                     'seed, fixed, metric)')
  for field, values in sweep.get('grid', {}).items():
    if '.' not in field and field != CONFIG_ARG:
      if not isinstance(values, dict) or not all(isinstance(v, dict) for v in values.values()):
        raise ValueError(f'sweep grid axis {field!r}: a key without a dot names variants, '
                         '{name: {field: value}}; config fields are dotted paths')
    elif isinstance(values, (str, bytes)) or not len(values):
      raise ValueError(f'sweep grid axis {field!r}: expected a non-empty list of values')
  for field, dist in sweep.get('random', {}).items():
    if not isinstance(dist, (tuple, list)) or not dist or dist[0] not in DISTRIBUTIONS:
      raise ValueError(f'sweep random axis {field!r}={dist!r}: expected (KIND, ...), KIND one '
                       f'of {DISTRIBUTIONS}')
    kind = dist[0]
    if kind == 'choice':
      if len(dist) != 2 or not len(dist[1]):
        raise ValueError(f'sweep random axis {field!r}: expected (\'choice\', [values])')
    elif len(dist) != 3 or not dist[1] <= dist[2] or (kind == 'log_uniform' and dist[1] <= 0):
      raise ValueError(f'sweep random axis {field!r}={dist!r}: expected ({kind!r}, low, high) '
                       f'with low <= high{", low > 0" if kind == "log_uniform" else ""}')
  if sweep.get('random') and int(sweep.get('num_trials', 1)) < 1:
    raise ValueError(f'sweep num_trials={sweep["num_trials"]}: must be >= 1')


def draw(dist, rng: np.random.Generator):
  """One value from a random axis, as a plain Python value."""
  kind = dist[0]
  if kind == 'choice':
    return _plain(dist[1][int(rng.integers(len(dist[1])))])
  if kind == 'uniform':
    return float(rng.uniform(dist[1], dist[2]))
  if kind == 'log_uniform':
    return float(math.exp(rng.uniform(math.log(dist[1]), math.log(dist[2]))))
  return int(rng.integers(dist[1], dist[2], endpoint=True))


def random_draws(random: dict, num_trials: int, seed: int) -> list[dict]:
  """`num_trials` dicts of drawn values; trial i's depend only on (seed, i)."""
  draws = []
  for i in range(num_trials):
    rng = np.random.default_rng([seed, i])
    draws.append({field: draw(dist, rng) for field, dist in random.items()})
  return draws


def expand(sweep: dict) -> list[dict]:
  """The trials of a sweep: [{'name', 'values' (swept, for tables), 'overrides'}]."""
  check_sweep(sweep)
  grid = sweep.get('grid', {})
  random = sweep.get('random', {})
  fixed = dict(sweep.get('fixed', {}))
  axes = []
  for field, values in grid.items():
    if isinstance(values, dict):  # Named variants.
      axes.append([({field: name}, dict(overrides)) for name, overrides in values.items()])
    else:
      axes.append([({field: _plain(v)}, {field: _plain(v)}) for v in values])
  draws = random_draws(random, int(sweep.get('num_trials', 1)), int(sweep.get('seed', 0))) \
      if random else [{}]
  trials = []
  for point in itertools.product(*axes):
    for i, drawn in enumerate(draws):
      values, overrides = {}, dict(fixed)
      for shown, sets in point:
        values.update(shown)
        overrides.update(sets)
      if random:
        values['trial'] = i
      values.update(drawn)
      overrides.update(drawn)
      # Random trials are named by their index: their draws depend on (seed, index) alone.
      named = {k: v for k, v in values.items() if k not in drawn}
      trials.append(dict(name=trial_name(named), values=values, overrides=overrides))
  names = [t['name'] for t in trials]
  if len(set(names)) != len(names):
    raise ValueError('sweep: two trials have the same values; '
                     f'{[n for n in names if names.count(n) > 1][0]}')
  return trials


def trial_name(values: dict) -> str:
  """A directory name from the swept values: 'learning_rate=0.1-width=8'."""
  parts = []
  for field, value in values.items():
    if isinstance(value, float):
      value = f'{value:.4g}'
    parts.append(f'{field.rsplit(".", 1)[-1]}={value}')
  name = re.sub(r'[^A-Za-z0-9_.=+-]+', '_', '-'.join(parts)) or 'trial'
  if len(name) > 100:
    name = name[:90] + '-' + hashlib.sha1(repr(values).encode()).hexdigest()[:8]
  return name


def _plain(value):
  """numpy scalars and lists -> Python values whose repr is valid Python."""
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, list):
    return tuple(_plain(v) for v in value)
  return value


# ------------------------------------------------------- trial directories ---

def trial_config_source(config_file: str, config_arg: str | None, overrides: dict) -> str:
  """A config file: the base config with the trial's overrides, values written as Python."""
  overrides = {k: v for k, v in overrides.items() if k != CONFIG_ARG}
  lines = ',\n'.join(f'    {field!r}: {value!r}' for field, value in overrides.items())
  return (
      '"""Written by jaxcls sweep: the base config with this trial\'s values."""\n\n'
      'from jaxcls.config import apply_overrides, load_config_file\n\n'
      f'BASE = {str(Path(config_file).resolve())!r}\n'
      f'BASE_ARG = {config_arg!r}\n'
      f'OVERRIDES = {{\n{lines}{"," if lines else ""}\n}}\n\n\n'
      'def get_config():\n'
      '  return apply_overrides(load_config_file(BASE, BASE_ARG), OVERRIDES)\n')


def read_trial(workdir: Path) -> dict:
  try:
    return json.loads((workdir / TRIAL_JSON).read_text())
  except (OSError, ValueError):
    return {}


def write_json(path: Path, value) -> None:
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps(value, indent=2, default=str))
  os.replace(tmp, path)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
  try:
    return '\n'.join(path.read_text(errors='replace').splitlines()[-lines:])
  except OSError:
    return ''


def device_groups(devices: list[str], parallel: int) -> list[str | None]:
  """CUDA_VISIBLE_DEVICES per slot: the accelerators divided evenly among `parallel` slots
  (shared round-robin when there are fewer than slots); None for no pinning."""
  if len(devices) <= 1:
    return [None] * parallel
  if len(devices) < parallel:
    return [devices[i % len(devices)] for i in range(parallel)]
  per_slot = len(devices) // parallel
  return [','.join(devices[i * per_slot:(i + 1) * per_slot]) for i in range(parallel)]


def visible_accelerators() -> list[str]:
  """GPU ids this process may use: CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`, else none.

  Found without importing JAX, which would claim the GPUs' memory for the launcher.
  """
  if os.environ.get('CUDA_VISIBLE_DEVICES'):
    return [d for d in os.environ['CUDA_VISIBLE_DEVICES'].split(',') if d]
  if shutil.which('nvidia-smi'):
    try:
      out = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
      return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith('GPU ')]
  return []


# ------------------------------------------------------------------- sweep ---

class Sweep:
  """Runs the trials of a sweep under one root directory, `parallel` at a time."""

  def __init__(self, config: str, trials: list[dict], root: str | Path, *, parallel: int = 1,
               devices: list[str] | None = None, python: str = sys.executable,
               retry_failed: bool = True, extra_env: dict | None = None):
    self.config_file, _, self.config_arg = config_files.resolve(config).partition(':')
    self.config_arg = self.config_arg or None
    if not Path(self.config_file).is_file():
      raise SystemExit(f'--config {config}: no such file (shipped configs: '
                       f'{", ".join(config_files.shipped())})')
    self.trials = trials
    self.root = Path(root)
    self.parallel = max(1, parallel)
    self.slots = device_groups(visible_accelerators() if devices is None else devices,
                               self.parallel)
    self.python = python
    self.retry_failed = retry_failed
    self.extra_env = extra_env or {}

  def status(self, trial: dict) -> str:
    workdir = self.root / trial['name']
    if (workdir / 'results.json').is_file():
      return 'finished'
    return read_trial(workdir).get('status', 'pending')

  def run(self) -> dict[str, str]:
    """Runs every unfinished trial; returns {name: 'finished' | 'failed' | 'skipped'}."""
    self.root.mkdir(parents=True, exist_ok=True)
    write_json(self.root / SWEEP_JSON, dict(
        config=str(Path(self.config_file).resolve()), config_arg=self.config_arg,
        trials=[dict(name=t['name'], values=t['values'], overrides=t['overrides'])
                for t in self.trials]))
    outcome, queue = {}, []
    for trial in self.trials:
      recorded = read_trial(self.root / trial['name']).get('overrides')
      if recorded is not None and recorded != json.loads(json.dumps(trial['overrides'])):
        raise SystemExit(f'{self.root / trial["name"]} holds a trial with other values '
                         f'({recorded}, now {trial["overrides"]}): use another --root')
      status = self.status(trial)
      if status == 'finished' or (status == 'failed' and not self.retry_failed):
        outcome[trial['name']] = 'skipped'
        print(f'[sweep] skip {trial["name"]} ({status})', flush=True)
      else:
        queue.append(trial)
    running = {}  # slot -> (trial, process, log file, start time)
    try:
      while queue or running:
        for slot in range(self.parallel):
          if slot not in running and queue:
            running[slot] = self._start(queue.pop(0), slot)
        time.sleep(0.2)
        self._reap(running, outcome)
    except KeyboardInterrupt:
      self._interrupt(running)
      raise
    done = list(outcome.values())
    print(f'[sweep] {self.root}: {done.count("finished")} finished, {done.count("failed")} '
          f'failed, {done.count("skipped")} skipped', flush=True)
    return outcome

  def _reap(self, running: dict, outcome: dict) -> list[dict]:
    """Records the trials of `running` (slot -> (trial, process, log, start)) whose process
    ended, in `outcome`, and takes them out; returns them."""
    ended = []
    for slot, (trial, process, log, started) in list(running.items()):
      if process.poll() is not None:
        log.close()
        outcome[trial['name']] = self._finish(trial, process.returncode, started)
        del running[slot]
        ended.append(trial)
    return ended

  def _interrupt(self, running: dict) -> None:
    """Ctrl-C: the running trials stop, recorded as interrupted (a rerun resumes them)."""
    for trial, process, log, started in running.values():
      process.terminate()
      process.wait()
      log.close()
      self._record(trial, status='interrupted', seconds=time.time() - started)

  def _command(self, workdir: Path) -> list[str]:
    return [self.python, '-m', 'jaxcls.main', f'--config={workdir / "trial_config.py"}',
            f'--workdir={workdir}']

  def _start(self, trial: dict, slot: int):
    workdir = (self.root / trial['name']).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'trial_config.py').write_text(trial_config_source(
        self.config_file, trial['overrides'].get(CONFIG_ARG, self.config_arg),
        trial['overrides']))
    env = dict(os.environ, **self.extra_env)
    env.setdefault('JAX_COMPILATION_CACHE_DIR', str((self.root / '.jax_cache').resolve()))
    # The model's initialisers compile many small programs: cache those too.
    env.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
    env.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), env.get('PYTHONPATH')]))
    if self.slots[slot] is not None:
      env['CUDA_VISIBLE_DEVICES'] = self.slots[slot]
    command = self._command(workdir)
    log = open(workdir / 'log.txt', 'a')
    log.write(f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")} {" ".join(command)}\n')
    log.flush()
    started = time.time()
    self._record(trial, status='running', command=command, started=started,
                 devices=self.slots[slot], pid=None)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    self._record(trial, pid=process.pid)
    print(f'[sweep] start {trial["name"]}' +
          (f' on CUDA_VISIBLE_DEVICES={self.slots[slot]}' if self.slots[slot] else ''),
          flush=True)
    return trial, process, log, started

  def _finish(self, trial: dict, returncode: int, started: float) -> str:
    workdir = self.root / trial['name']
    seconds = time.time() - started
    if returncode == 0 and (workdir / 'results.json').is_file():
      self._record(trial, status='finished', returncode=0, seconds=seconds, log_tail=None)
      print(f'[sweep] done  {trial["name"]} ({seconds:.0f} s)', flush=True)
      return 'finished'
    tail = log_tail(workdir / 'log.txt')
    self._record(trial, status='failed', returncode=returncode, seconds=seconds, log_tail=tail)
    last = next((line for line in reversed(tail.splitlines()) if line.strip()), '')
    print(f'[sweep] FAIL  {trial["name"]} (exit {returncode}): {last[:200]}', flush=True)
    return 'failed'

  def _record(self, trial: dict, **fields) -> None:
    workdir = self.root / trial['name']
    record = read_trial(workdir) or dict(name=trial['name'], values=trial['values'],
                                         overrides=trial['overrides'])
    record.update(values=trial['values'], overrides=trial['overrides'], **fields)
    write_json(workdir / TRIAL_JSON, record)


def parse_set(assignments: list[str]) -> dict:
  """['train.num_epochs=2', "data.source='tfds:cifar10'"] -> {field: value} (Python literals,
  else the plain string)."""
  fixed = {}
  for assignment in assignments or ():
    field, sep, text = assignment.partition('=')
    if not sep:
      raise SystemExit(f'--set {assignment}: expected FIELD=VALUE')
    try:
      fixed[field.strip()] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      fixed[field.strip()] = text
  return fixed


def run_sweep(config: str, sweep: dict, root: str | Path, *, parallel: int = 1,
              fixed: dict | None = None, **kwargs) -> dict[str, str]:
  """Expands `sweep` (with `fixed` overrides on top of its own) and runs it under `root`."""
  sweep = dict(sweep, fixed={**sweep.get('fixed', {}), **(fixed or {})})
  return Sweep(config, expand(sweep), root, parallel=parallel, **kwargs).run()
