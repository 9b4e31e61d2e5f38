"""Model-based search: `jaxcls sweep --search tpe|random|grid`, a sweep whose trials Optuna picks.

The same sweep files and axis syntax as a grid or random sweep (`jaxcls.launch.sweep`):
every `grid` axis is a categorical choice (named variants by name), every `random` axis a
distribution ('choice', 'uniform', 'log_uniform', 'int'); `fixed` and `--set` apply to
every trial. The sampler is Optuna's TPESampler, RandomSampler or GridSampler (grid: every
axis categorical, each combination once), seeded by the sweep's `seed`.

The study lives in ROOT/study.db (SQLite): rerunning the same command resumes it, restarting
the trials that were running (from their checkpoints) and asking for new ones until
`--num_trials` exist. Each trial is a `python -m jaxcls.main` process in ROOT/trial=N/, as in
any sweep, whose config reports every validation to its Optuna trial
(`config.tracking.optuna_*`, `jaxcls.training.pruning`): the pruner (median or Hyperband,
`--pruner`) stops a trial that falls behind, which ends with exit status
`jaxcls.errors.PRUNED_EXIT_STATUS` and is recorded as pruned, not failed. A finished trial's
value is its best validation `--metric` (results.json's best_val).
"""

import json
import time
from pathlib import Path

from jaxcls.errors import PRUNED_EXIT_STATUS
from jaxcls.launch import sweep as sweep_lib

SEARCHES = ('tpe', 'random', 'grid')
PRUNERS = ('median', 'hyperband', 'none')
STUDY_DB = 'study.db'
STUDY_NAME = 'jaxcls'
_PRIMITIVE = (str, int, float, bool, type(None))


def _optuna():
  try:
    import optuna  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit("jaxcls sweep --search needs Optuna: pip install 'jaxcls[optuna]'") from e
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return optuna


def distributions(sweep: dict) -> dict:
  """{field: optuna distribution} of the sweep's grid and random axes."""
  optuna = _optuna()
  sweep_lib.check_sweep(sweep)
  space = {}
  for field, values in sweep.get('grid', {}).items():
    choices = list(values) if isinstance(values, dict) else [sweep_lib._plain(v) for v in values]  # pylint: disable=protected-access
    bad = [v for v in choices if not isinstance(v, _PRIMITIVE)]
    if bad:
      raise ValueError(f'sweep grid axis {field!r}: Optuna chooses among str, int, float, bool '
                       f'or None values, not {bad[0]!r} (name such values as variants)')
    space[field] = optuna.distributions.CategoricalDistribution(choices)
  for field, dist in sweep.get('random', {}).items():
    kind = dist[0]
    if kind == 'choice':
      space[field] = optuna.distributions.CategoricalDistribution(
          [sweep_lib._plain(v) for v in dist[1]])  # pylint: disable=protected-access
    elif kind == 'int':
      space[field] = optuna.distributions.IntDistribution(int(dist[1]), int(dist[2]))
    else:
      space[field] = optuna.distributions.FloatDistribution(
          float(dist[1]), float(dist[2]), log=kind == 'log_uniform')
  if not space:
    raise ValueError('sweep: Optuna needs at least one grid or random axis')
  return space


def make_sampler(search: str, space: dict, seed: int):
  optuna = _optuna()
  if search == 'tpe':
    return optuna.samplers.TPESampler(seed=seed)
  if search == 'random':
    return optuna.samplers.RandomSampler(seed=seed)
  not_categorical = [f for f, d in space.items()
                     if not isinstance(d, optuna.distributions.CategoricalDistribution)]
  if not_categorical:
    raise ValueError(f'--search grid: axis {not_categorical[0]!r} is continuous; give it a '
                     "list of values (grid) or ('choice', [...])")
  return optuna.samplers.GridSampler({f: list(d.choices) for f, d in space.items()}, seed=seed)


def grid_size(space: dict) -> int:
  size = 1
  for dist in space.values():
    size *= len(dist.choices)
  return size


def trial_overrides(sweep: dict, params: dict) -> dict:
  """The config overrides of one trial: `fixed`, then each chosen value (a variant's own
  overrides for a named-variant axis)."""
  overrides = dict(sweep.get('fixed', {}))
  for field, value in params.items():
    variants = sweep.get('grid', {}).get(field)
    overrides.update(variants[value] if isinstance(variants, dict) else {field: value})
  return overrides


class OptunaSweep(sweep_lib.Sweep):
  """A sweep whose trials Optuna asks for, `parallel` at a time, until `num_trials` exist."""

  def __init__(self, config: str, sweep: dict, root, *, search: str = 'tpe',
               num_trials: int = 10, pruner: str = 'median', metric: str = 'val_accuracy',
               startup_trials: int = 2, warmup_epochs: int = 1, **kwargs):
    if search not in SEARCHES:
      raise SystemExit(f'--search {search}: one of grid_random (no Optuna), '
                       f'{", ".join(SEARCHES)}')
    if pruner not in PRUNERS:
      raise SystemExit(f'--pruner {pruner}: one of {", ".join(PRUNERS)}')
    super().__init__(config, [], root, **kwargs)
    self.sweep = sweep
    try:
      self.space = distributions(sweep)
      self.sampler = make_sampler(search, self.space, int(sweep.get('seed', 0)))
    except ValueError as e:
      raise SystemExit(str(e)) from e
    self.num_trials = (min(num_trials, grid_size(self.space)) if search == 'grid'
                       else num_trials)
    self.metric = metric
    self.direction = 'minimize' if 'loss' in metric else 'maximize'
    # Hyperband's largest budget: the trials' epochs when the sweep fixes them, else Optuna's
    # estimate from the first trials ('auto', max_epochs=0).
    self.pruner = dict(name=pruner, startup_trials=startup_trials, warmup_epochs=warmup_epochs,
                       max_epochs=int(sweep.get('fixed', {}).get('train.num_epochs', 0)))

  def _study(self):
    optuna = _optuna()
    self.root.mkdir(parents=True, exist_ok=True)
    self.storage = f'sqlite:///{(self.root / STUDY_DB).resolve()}'
    study = optuna.create_study(study_name=STUDY_NAME, storage=self.storage,
                                sampler=self.sampler, direction=self.direction,
                                load_if_exists=True)
    if study.direction.name.lower() != self.direction:
      raise SystemExit(f'{self.root / STUDY_DB}: its study {study.direction.name.lower()}s; '
                       f'--metric {self.metric} asks to {self.direction}: use another --root')
    study.set_user_attr('pruner', self.pruner)
    study.set_user_attr('metric', self.metric)
    return study

  def _trial(self, number: int, params: dict) -> dict:
    values = {'trial': number, **params}
    overrides = dict(trial_overrides(self.sweep, params), **{
        'tracking.optuna_storage': self.storage, 'tracking.optuna_study': STUDY_NAME,
        'tracking.optuna_trial': number, 'tracking.optuna_metric': self.metric})
    return dict(name=sweep_lib.trial_name({'trial': number}), values=values,
                overrides=overrides, number=number)

  def _write_record(self) -> None:
    sweep_lib.write_json(self.root / sweep_lib.SWEEP_JSON, dict(
        config=str(Path(self.config_file).resolve()), config_arg=self.config_arg,
        search='optuna', study=str(self.root / STUDY_DB), metric=self.metric,
        trials=[dict(name=t['name'], values=t['values'], overrides=t['overrides'])
                for t in self.trials]))

  def run(self) -> dict[str, str]:
    """Runs the study to `num_trials` trials; returns {name: 'finished' | 'pruned' | 'failed'}."""
    optuna = _optuna()
    study = self._study()
    states = optuna.trial.TrialState
    queue = []
    for frozen in study.get_trials(deepcopy=False):
      trial = self._trial(frozen.number, frozen.params)
      self.trials.append(trial)
      if frozen.state != states.RUNNING:
        continue
      if (self.root / trial['name'] / 'results.json').is_file():  # Finished, never told.
        self._record(trial, status='finished')
        self._tell(study, trial, 'finished')
      else:  # Its sweep stopped: the trial resumes from its checkpoint.
        print(f'[sweep] resume {trial["name"]} (running when the sweep stopped)', flush=True)
        queue.append(trial)
    self._write_record()
    outcome, running = {}, {}
    try:
      while True:
        for slot in range(self.parallel):
          if slot in running:
            continue
          if not queue and len(study.trials) < self.num_trials:
            asked = study.ask(self.space)
            trial = self._trial(asked.number, asked.params)
            self.trials.append(trial)
            self._write_record()
            queue.append(trial)
          if queue:
            running[slot] = self._start(queue.pop(0), slot)
        if not running:
          break
        time.sleep(0.2)
        for trial in self._reap(running, outcome):
          self._tell(study, trial, outcome[trial['name']])
    except KeyboardInterrupt:
      self._interrupt(running)
      raise
    done = list(outcome.values())
    counts = {s: done.count(s) for s in ('finished', 'pruned', 'failed')}
    print(f'[sweep] {self.root}: ' + ', '.join(f'{n} {s}' for s, n in counts.items()) +
          f' this run; study {self.root / STUDY_DB}: {len(study.trials)} trials', flush=True)
    try:
      best = study.best_trial
      print(f'[sweep] best: trial {best.number}, {self.metric} {best.value:.4f}, '
            f'{json.dumps(best.params)}', flush=True)
    except ValueError:
      pass  # No trial finished.
    return outcome

  def _finish(self, trial: dict, returncode: int, started: float) -> str:
    if returncode != PRUNED_EXIT_STATUS:
      return super()._finish(trial, returncode, started)
    seconds = time.time() - started
    tail = sweep_lib.log_tail(self.root / trial['name'] / 'log.txt')
    reason = next((line for line in reversed(tail.splitlines()) if 'pruned' in line), '')
    self._record(trial, status='pruned', returncode=returncode, seconds=seconds,
                 log_tail=None, pruned=reason.removeprefix('jaxcls: '))
    print(f'[sweep] prune {trial["name"]} ({seconds:.0f} s): {reason.removeprefix("jaxcls: ")}',
          flush=True)
    return 'pruned'

  def _tell(self, study, trial: dict, status: str) -> None:
    try:
      self._tell_state(study, trial, status)
    except RuntimeError as e:  # GridSampler stops an optimize loop once every point was asked;
      if 'Study.stop' not in str(e):  # told outside one, it raises after storing the state.
        raise

  def _tell_state(self, study, trial: dict, status: str) -> None:
    optuna = _optuna()
    states = optuna.trial.TrialState
    if status == 'finished':
      results = json.loads((self.root / trial['name'] / 'results.json').read_text())
      value = results['best_val'].get(self.metric.removeprefix('val_'))
      if value is None:
        study.tell(trial['number'], state=states.FAIL)
        print(f'[sweep] {trial["name"]}: results.json has no best_val '
              f'{self.metric.removeprefix("val_")!r}; told Optuna it failed', flush=True)
        return
      study.tell(trial['number'], float(value))
    elif status == 'pruned':
      study.tell(trial['number'], state=states.PRUNED)
    else:
      study.tell(trial['number'], state=states.FAIL)


def study_summary(root: Path, metric: str) -> str | None:
  """Markdown: the study's trials by state and its best trial's parameters (None without a
  study in ROOT)."""
  path = Path(root) / STUDY_DB
  if not path.is_file():
    return None
  optuna = _optuna()
  study = optuna.load_study(study_name=STUDY_NAME, storage=f'sqlite:///{path.resolve()}')
  counts = {}
  for trial in study.trials:
    counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
  lines = [f'### Optuna study ({path})', '',
           f'{len(study.trials)} trials: ' + ', '.join(f'{n} {s}' for s, n in counts.items())]
  try:
    best = study.best_trial
  except ValueError:
    return '\n'.join(lines + ['', 'No trial has finished yet.']) + '\n'
  metric = study.user_attrs.get('metric', metric)
  lines += ['', f'Best: trial {best.number}, {metric} {best.value:.4f}', '',
            '| parameter | value |', '|---|---|']
  lines += [f'| {name} | {value:.4g} |' if isinstance(value, float) else f'| {name} | {value} |'
            for name, value in best.params.items()]
  return '\n'.join(lines) + '\n'
