"""`jaxcls sweep --search tpe|random|grid`: Optuna picks the trials, the trainer reports every
validation to its trial, the pruner stops the bad ones, the study in ROOT/study.db resumes."""

import json
import statistics
from pathlib import Path

import pytest

from jaxcls.launch import optuna_search, summarize

DEFAULT = str(Path(__file__).resolve().parents[1] / 'configs' / 'default.py')

optuna = pytest.importorskip('optuna')

# Digits at 16x16, 32 steps of 64 per epoch, two epochs: a learning rate of 1e-6 stays at
# chance (val accuracy 0.11 after epoch 1) while 0.1 learns (0.39), so the median pruner
# stops the former after its first epoch.
TINY = {'data.image_size': 16, 'train.num_epochs': 2, 'optimizer.warmup_epochs': 0.0,
        'data.epoch_examples': 2048, 'train.log_every_steps': 8, 'evaluate.report_at_end': False}
SWEEP = {'grid': {'optimizer.learning_rate': [0.1, 1e-6], 'model.width': [4, 6]}, 'fixed': TINY}


def test_axes_become_optuna_distributions_and_variants_their_overrides():
  sweep = {'grid': {'model.width': [4, 8], 'aug': {'none': {}, 'flip': {'data.augment.flip': True}}},
           'random': {'optimizer.learning_rate': ('log_uniform', 1e-4, 1e-1),
                      'train.batch_size': ('int', 16, 64), 'loss.kind': ('choice', ['ce', 'focal'])},
           'fixed': {'train.num_epochs': 3}}
  space = optuna_search.distributions(sweep)
  assert space['model.width'].choices == (4, 8) and space['aug'].choices == ('none', 'flip')
  assert space['optimizer.learning_rate'].log and space['optimizer.learning_rate'].low == 1e-4
  assert (space['train.batch_size'].low, space['train.batch_size'].high) == (16, 64)
  assert optuna_search.trial_overrides(sweep, {'aug': 'flip', 'model.width': 8}) == {
      'train.num_epochs': 3, 'data.augment.flip': True, 'model.width': 8}
  with pytest.raises(ValueError, match="axis 'optimizer.learning_rate' is continuous"):
    optuna_search.make_sampler('grid', space, 0)
  assert optuna_search.grid_size(optuna_search.distributions(SWEEP)) == 4


@pytest.mark.slow
def test_a_pruned_trial_stops_after_its_epoch_and_a_rerun_resumes_the_study(tmp_path):
  cache = {'JAX_COMPILATION_CACHE_DIR': str(tmp_path / 'cache')}
  root = tmp_path / 'study'

  def search(num_trials):
    return optuna_search.OptunaSweep(DEFAULT, SWEEP, root, search='grid', num_trials=num_trials,
                                     pruner='median', startup_trials=1, warmup_epochs=0,
                                     devices=[], extra_env=cache).run()

  first = search(3)
  assert len(first) == 3 and 'failed' not in first.values(), first
  finished = {p.name: (p / 'results.json').stat().st_mtime_ns for p in root.iterdir()
              if (p / 'results.json').is_file()}
  second = search(4)  # The same study: one more trial, none of the first three again.
  assert list(second) == ['trial=3']
  assert finished == {p.name: (p / 'results.json').stat().st_mtime_ns for p in root.iterdir()
                      if (p / 'results.json').is_file() and p.name in finished}
  assert search(4) == {}  # Nothing left to do.

  study = optuna.load_study(study_name='jaxcls', storage=f'sqlite:///{root / "study.db"}')
  states = {t.number: t.state.name for t in study.trials}
  assert len(states) == 4 and 'FAIL' not in states.values(), states
  pruned = [t for t in study.trials if t.state.name == 'PRUNED']
  assert pruned, states
  for trial in study.trials:  # The median rule over the trials finished before it, at epoch 1:
    finished = [t.intermediate_values[1] for t in study.trials
                if t.number < trial.number and t.state.name == 'COMPLETE']
    # the bad rate is pruned once a good trial finished; a good one only below their median
    # (two good trials' median is their mean, so the third good one can fall under it).
    if trial.params['optimizer.learning_rate'] == 1e-6 and finished:
      assert trial in pruned, states
    if trial in pruned:
      assert finished and trial.intermediate_values[1] < statistics.median(finished), states
  for trial in pruned:
    assert list(trial.intermediate_values) == [1]  # Reported after epoch 1, stopped there.
    record = json.loads((root / f'trial={trial.number}' / 'trial.json').read_text())
    assert record['status'] == 'pruned' and 'pruned trial' in record['pruned']
  for trial in study.trials:
    if trial.state.name == 'COMPLETE':
      results = json.loads((root / f'trial={trial.number}' / 'results.json').read_text())
      assert trial.value == results['best_val']['accuracy']
      assert sorted(trial.intermediate_values) == [1, 2]
  assert study.best_trial.params['optimizer.learning_rate'] == 0.1

  table = summarize.summarize(root)
  rows = {r['trial']: r for r in table['rows']}
  assert {rows[f'trial={t.number}']['status'] for t in pruned} == {'pruned'}
  assert all(rows[f'trial={t.number}']['epochs'] == 1 for t in pruned)
  assert 'Optuna study' in table['markdown'] and f'Best: trial {study.best_trial.number}' in (
      table['markdown'])
  assert (root / 'val_curves.png').is_file()


@pytest.mark.parametrize('warmup_epochs', [0, 1])
def test_the_median_pruner_spares_the_warmup_epochs_and_prunes_after(warmup_epochs):
  from jaxcls.training.pruning import make_pruner  # pylint: disable=g-import-not-at-top
  study = optuna.create_study(direction='maximize',
                              pruner=make_pruner('median', startup_trials=1,
                                                 warmup_epochs=warmup_epochs))
  good = study.ask()
  for epoch in (1, 2):
    good.report(0.9, epoch)
  study.tell(good, 0.9)
  bad = study.ask()
  pruned_at = []
  for epoch in (1, 2):
    bad.report(0.1, epoch)
    pruned_at += [epoch] if bad.should_prune() else []
  assert pruned_at == [e for e in (1, 2) if e > warmup_epochs]
