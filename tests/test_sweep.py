"""Specification of jaxcls.launch.sweep and .summarize (`jaxcls sweep`, `jaxcls summarize`): trials, draws, crashes, tables."""

import json
import math
from pathlib import Path

import pytest

from jaxcls.config import load_config_file

from jaxcls.launch import summarize, sweep

DEFAULT = str(Path(__file__).resolve().parents[1] / 'configs' / 'default.py')
# Digits at 16x16, 4 steps of 128 per epoch, one epoch: seconds per trial.
TINY = {'data.image_size': 16, 'train.num_epochs': 1, 'train.batch_size': 128,
        'optimizer.warmup_epochs': 0.0, 'data.epoch_examples': 512, 'train.log_every_steps': 2,
        'evaluate.report_at_end': False}


@pytest.fixture(scope='module')
def compile_cache(tmp_path_factory):
  """One XLA compilation cache for every trial of this module, as a sweep shares one."""
  return {'JAX_COMPILATION_CACHE_DIR': str(tmp_path_factory.mktemp('jax_cache'))}


def _write_trial(workdir: Path, record: dict) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  sweep.write_json(workdir / 'trial.json', record)


# ------------------------------------------------------------ expansion ---

def test_grid_is_every_combination_first_axis_outermost():
  trials = sweep.expand({'grid': {'optimizer.learning_rate': [0.1, 0.01], 'model.width': [4, 8]}})
  assert [t['overrides'] for t in trials] == [
      {'optimizer.learning_rate': 0.1, 'model.width': 4},
      {'optimizer.learning_rate': 0.1, 'model.width': 8},
      {'optimizer.learning_rate': 0.01, 'model.width': 4},
      {'optimizer.learning_rate': 0.01, 'model.width': 8}]
  assert trials[0]['name'] == 'learning_rate=0.1-width=4'


def test_named_variants_set_several_fields_and_show_their_name():
  trials = sweep.expand({'grid': {'rung': {'none': {}, 'mixup': {'mixup.mixup_alpha': 0.2}}},
                         'fixed': {'train.num_epochs': 2}})
  assert [t['values'] for t in trials] == [{'rung': 'none'}, {'rung': 'mixup'}]
  assert trials[1]['overrides'] == {'train.num_epochs': 2, 'mixup.mixup_alpha': 0.2}


RANDOM = {'random': {'optimizer.learning_rate': ('log_uniform', 1e-4, 1e-1),
                     'train.label_smoothing': ('uniform', 0.0, 0.2),
                     'model.width': ('int', 4, 6),
                     'optimizer.name': ('choice', ['sgd', 'adamw'])},
          'num_trials': 400, 'seed': 7}


def test_random_search_with_the_same_seed_draws_the_same_trials():
  assert sweep.expand(RANDOM) == sweep.expand(dict(RANDOM))
  assert sweep.expand(RANDOM) != sweep.expand(dict(RANDOM, seed=8))


def test_more_random_trials_keep_the_earlier_ones():
  assert sweep.expand(dict(RANDOM, num_trials=3)) == sweep.expand(RANDOM)[:3]


def test_random_draws_follow_their_distributions():
  drawn = [t['overrides'] for t in sweep.expand(RANDOM)]
  lrs = [d['optimizer.learning_rate'] for d in drawn]
  assert all(1e-4 <= lr <= 1e-1 for lr in lrs)
  # Log-uniform: each decade of the three holds about a third of the draws.
  decades = [sum(10**-(5 - k) <= lr < 10**-(4 - k) for lr in lrs) for k in range(1, 4)]
  assert all(100 <= count <= 170 for count in decades), decades
  assert abs(sum(math.log10(lr) for lr in lrs) / len(lrs) + 2.5) < 0.1
  smoothing = [d['train.label_smoothing'] for d in drawn]
  assert all(0 <= s <= 0.2 for s in smoothing) and abs(sum(smoothing) / len(drawn) - 0.1) < 0.01
  assert {d['model.width'] for d in drawn} == {4, 5, 6}  # Both ends included.
  assert {d['optimizer.name'] for d in drawn} == {'sgd', 'adamw'}
  assert all(type(d['model.width']) is int and type(d['optimizer.learning_rate']) is float
             for d in drawn)


def test_random_trials_repeat_the_same_draws_at_every_grid_point():
  trials = sweep.expand(dict(RANDOM, num_trials=2, grid={'data.fold': [0, 1]}))
  assert [t['name'] for t in trials] == ['fold=0-trial=0', 'fold=0-trial=1', 'fold=1-trial=0',
                                         'fold=1-trial=1']
  assert trials[0]['overrides']['optimizer.learning_rate'] == \
      trials[2]['overrides']['optimizer.learning_rate']


@pytest.mark.parametrize('bad, message', [
    ({'random': {'optimizer.learning_rate': ('log_uniform', 0.0, 1.0)}}, 'learning_rate'),
    ({'random': {'model.width': ('normal', 0, 1)}}, 'model.width'),
    ({'grid': {'optimizer.learning_rate': []}}, 'learning_rate'),
    ({'grid': {'rung': [1, 2]}}, 'rung'),
    ({'axes': {}}, 'unknown keys')])
def test_malformed_sweeps_are_rejected_naming_the_axis(bad, message):
  with pytest.raises(ValueError, match=message):
    sweep.expand(bad)


def test_parallel_trials_get_disjoint_accelerators():
  assert sweep.device_groups(['0', '1', '2', '3'], 2) == ['0,1', '2,3']
  assert sweep.device_groups(['0', '1', '2', '3'], 4) == ['0', '1', '2', '3']
  assert sweep.device_groups(['0', '1'], 3) == ['0', '1', '0']
  assert sweep.device_groups([], 2) == [None, None]  # CPU: no pinning.


def test_trial_config_file_is_the_base_config_with_the_overrides(tmp_path):
  path = tmp_path / 'trial_config.py'
  path.write_text(sweep.trial_config_source(DEFAULT, None, {
      'optimizer.learning_rate': 0.003, 'data.augment.affine_scale': (0.9, 1.1),
      'model.pretrained': None, 'optimizer.name': 'adamw'}))
  config = load_config_file(path)
  assert config.optimizer.learning_rate == 0.003 and config.optimizer.name == 'adamw'
  assert tuple(config.data.augment.affine_scale) == (0.9, 1.1)


def test_a_root_is_not_reused_for_other_values(tmp_path):
  trial = sweep.expand({'grid': {'model.width': [4]}})[0]
  _write_trial(tmp_path / trial['name'], dict(overrides={'model.width': 8}))
  with pytest.raises(SystemExit, match='other values'):
    sweep.Sweep(DEFAULT, [trial], tmp_path, devices=[]).run()


# ------------------------------------------------------------- summaries ---

def _fake_results(workdir: Path, val_accuracy: float, test_accuracy: float, epochs: int = 2,
                  train_accuracy: float = 0.9) -> None:
  workdir.mkdir(parents=True)
  history = [dict(epoch=e + 1, step=10 * (e + 1), train=dict(loss=0.5, accuracy=train_accuracy),
                  val=dict(loss=1 - val_accuracy, accuracy=val_accuracy * (e + 1) / epochs))
             for e in range(epochs)]
  (workdir / 'results.json').write_text(json.dumps(dict(
      test=dict(loss=1 - test_accuracy, accuracy=test_accuracy), best_val=history[-1]['val'],
      best_epoch=epochs, history=history, timings=dict(train_images_per_second=1000.0,
                                                       total_seconds=12.0),
      config=dict(checkpoint=dict(best_metric='accuracy', best_mode='max')))))
  _write_trial(workdir, dict(status='finished', seconds=20.0))


def _fake_sweep(root: Path, trials: list[dict]) -> None:
  root.mkdir(parents=True, exist_ok=True)
  sweep.write_json(root / 'sweep.json', dict(trials=trials))


def test_summary_sorts_by_the_metric_and_lists_running_and_failed_trials(tmp_path):
  values = [{'model.width': w} for w in (4, 8, 16, 32)]
  _fake_sweep(tmp_path, [dict(name=f'width={v["model.width"]}', values=v) for v in values])
  _fake_results(tmp_path / 'width=4', val_accuracy=0.7, test_accuracy=0.8)
  _fake_results(tmp_path / 'width=8', val_accuracy=0.9, test_accuracy=0.6, train_accuracy=0.95)
  running = tmp_path / 'width=16' / 'checkpoints' / '10' / 'meta'
  running.mkdir(parents=True)
  (running / 'metadata').write_text(json.dumps(dict(epoch=1, history=[dict(
      epoch=1, step=10, train=dict(loss=1.0, accuracy=0.5), val=dict(loss=0.9, accuracy=0.55))])))
  _write_trial(tmp_path / 'width=16', dict(status='running', started=0))
  _write_trial(tmp_path / 'width=32', dict(status='failed', log_tail='...\njaxcls: bad width'))

  by_val = summarize.summarize(tmp_path, write=False)
  assert [r['trial'] for r in by_val['rows']] == ['width=8', 'width=4', 'width=16', 'width=32']
  assert [r['status'] for r in by_val['rows']] == ['finished', 'finished', 'running', 'failed']
  best = by_val['rows'][0]
  assert (best['model.width'], best['val_accuracy'], best['test_accuracy'], best['best_epoch'],
          best['images_per_s'], best['seconds']) == (8, 0.9, 0.6, 2, 1000.0, 20.0)
  assert best['gap'] == pytest.approx(0.05)
  assert by_val['rows'][2]['val_accuracy'] == 0.55 and by_val['rows'][2]['epochs'] == 1
  assert by_val['rows'][3]['error'] == 'jaxcls: bad width'
  by_test = summarize.summarize(tmp_path, metric='test_accuracy', write=False)
  assert [r['trial'] for r in by_test['rows']][:2] == ['width=4', 'width=8']
  by_loss = summarize.summarize(tmp_path, metric='test_loss')  # Lower is better.
  assert [r['trial'] for r in by_loss['rows']][:2] == ['width=4', 'width=8']

  lines = (tmp_path / 'summary.md').read_text().splitlines()
  assert lines[6].startswith('| width=4 | 4 | finished | 0.7000 |')
  csv_lines = (tmp_path / 'summary.csv').read_text().splitlines()
  assert csv_lines[0].startswith('trial,model.width,status,val_accuracy,')
  assert len(csv_lines) == 5 and (tmp_path / 'val_curves.png').stat().st_size > 0


def test_kfold_summary_gives_mean_and_std_per_configuration(tmp_path):
  trials = [dict(name=f'lr={lr}-fold={k}', values={'optimizer.learning_rate': lr, 'data.fold': k})
            for lr in (0.1, 0.01) for k in range(3)]
  _fake_sweep(tmp_path, trials)
  accuracies = {0.1: (0.8, 0.9, 1.0), 0.01: (0.5, 0.5, 0.5)}
  for trial in trials:
    lr, k = trial['values']['optimizer.learning_rate'], trial['values']['data.fold']
    _fake_results(tmp_path / trial['name'], val_accuracy=accuracies[lr][k], test_accuracy=0.5)
  folds = summarize.summarize(tmp_path)['folds']
  assert [(f['optimizer.learning_rate'], f['folds'], f['val_accuracy']) for f in folds] == [
      (0.1, '3/3', '0.9000 ± 0.1000'), (0.01, '3/3', '0.5000 ± 0.0000')]
  assert 'k-fold: mean ± std' in (tmp_path / 'summary.md').read_text()


# ------------------------------------------------------ real tiny sweeps ---

@pytest.fixture(scope='module')
def grid_root(tmp_path_factory, compile_cache):
  """A 2x2 grid (learning rate x width) of one-epoch trials, two at a time."""
  root = tmp_path_factory.mktemp('grid')
  outcome = sweep.run_sweep(
      DEFAULT, {'grid': {'optimizer.learning_rate': [0.05, 0.2], 'model.width': [4, 6]}}, root,
      parallel=2, fixed=TINY, devices=[], extra_env=compile_cache)
  return root, outcome


@pytest.mark.slow
def test_grid_sweep_trains_every_trial_and_the_summary_matches_their_results(grid_root):
  root, outcome = grid_root
  assert sorted(outcome.values()) == ['finished'] * 4
  workdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))
  assert [p.name for p in workdirs] == ['learning_rate=0.05-width=4', 'learning_rate=0.05-width=6',
                                        'learning_rate=0.2-width=4', 'learning_rate=0.2-width=6']
  table = summarize.summarize(root)
  assert len(table['rows']) == 4
  for row in table['rows']:
    results = json.loads((root / row['trial'] / 'results.json').read_text())
    config = json.loads((root / row['trial'] / 'config.json').read_text())
    assert (config['optimizer']['learning_rate'], config['model']['width']) == (
        row['optimizer.learning_rate'], row['model.width'])
    assert results['config']['train']['num_epochs'] == 1
    assert row['val_accuracy'] == results['best_val']['accuracy']
    assert row['test_accuracy'] == results['test']['accuracy']
  vals = [r['val_accuracy'] for r in table['rows']]
  assert vals == sorted(vals, reverse=True)


@pytest.mark.slow
def test_rerun_skips_finished_trials(grid_root, compile_cache):
  root, _ = grid_root
  before = {p.name: (p / 'results.json').stat().st_mtime_ns for p in root.iterdir()
            if (p / 'results.json').exists()}
  outcome = sweep.run_sweep(
      DEFAULT, {'grid': {'optimizer.learning_rate': [0.05, 0.2], 'model.width': [4, 6]}}, root,
      fixed=TINY, devices=[], extra_env=compile_cache)
  assert set(outcome.values()) == {'skipped'}
  assert before == {p.name: (p / 'results.json').stat().st_mtime_ns for p in root.iterdir()
                    if (p / 'results.json').exists()}


@pytest.mark.slow
def test_a_crashed_trial_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path, compile_cache):
  variants = {'grid': {'variant': {'bad': {'optimizer.learning_rate': -1.0}, 'good': {}}}}
  outcome = sweep.run_sweep(DEFAULT, variants, tmp_path, fixed=TINY, devices=[],
                            extra_env=compile_cache)
  assert outcome == {'variant=bad': 'failed', 'variant=good': 'finished'}
  failed = json.loads((tmp_path / 'variant=bad' / 'trial.json').read_text())
  assert failed['status'] == 'failed' and failed['returncode'] != 0
  assert 'config.optimizer.learning_rate=-1.0: must be positive' in failed['log_tail']
  rows = {r['trial']: r for r in summarize.summarize(tmp_path)['rows']}
  assert rows['variant=bad']['status'] == 'failed' and 'learning_rate' in rows['variant=bad']['error']
  # A re-run skips the finished trial (and, asked to, leaves the failed one).
  again = sweep.run_sweep(DEFAULT, variants, tmp_path, fixed=TINY, devices=[],
                          retry_failed=False, extra_env=compile_cache)
  assert again == {'variant=bad': 'skipped', 'variant=good': 'skipped'}
