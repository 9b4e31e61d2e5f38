"""One experiment: check and complete a config (`jaxcls.config`), train it in a workdir
(`jaxcls.training`), then write its report (`jaxcls.evaluation`), as `python -m jaxcls.main` does;
or, before training, a learning-rate range test of the same config (`find_learning_rate`).

The report comes last and apart from training: it reopens the finished run
from its workdir, exactly as `python -m jaxcls.cli.evaluate` would later, so a
report never depends on state the loop happened to hold.
"""

import json
from pathlib import Path

import jax
import ml_collections
from absl import logging

from jaxcls.config import resolve_automatic_fields, validate
from jaxcls.data import sources as data_sources
from jaxcls.errors import ConfigError
from jaxcls.evaluation.evaluate import report_finished_run
from jaxcls.evaluation.report import figures
from jaxcls.training import lr_find, tracking
from jaxcls.training.loop import fit

LR_FIND_JSON, LR_FIND_PNG = 'lr_find.json', 'lr_find.png'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> dict:
  """Trains, validates every epoch, tests the best checkpoint; returns and writes results.json.

  The config is checked first (every problem at once, `jaxcls.config.validate`)
  and its automatic fields filled in from the pretrained weights, so nothing
  compiles for a config that cannot run. The rest is `jaxcls.training.loop.fit`.
  """
  validate(config, device_count=jax.device_count())
  _check_data(config)
  if jax.process_index() == 0:  # Trackers write from process 0 alone; a missing one stops it here.
    tracking.require_packages(config.tracking)
  config = resolve_automatic_fields(config, log=True)
  return fit(config, workdir, allow_config_change=allow_config_change)


def _check_data(config: ml_collections.ConfigDict) -> None:
  problem = data_sources.unavailable(config.data)
  if problem:  # Before the workdir exists: a typo in a path leaves nothing behind.
    raise ConfigError(f'config.data.source={config.data.source!r}: {problem}')


def find_learning_rate(config: ml_collections.ConfigDict, workdir: str,
                       **range_test_args) -> lr_find.RangeTest:
  """The learning-rate range test of `config` (`lr_find.range_test`, which takes
  `range_test_args`): WORKDIR/lr_find.json (rates, losses, the suggestion and its rule) and
  WORKDIR/lr_find.png (the losses against the rate). No checkpoint is written."""
  validate(config, device_count=jax.device_count())
  _check_data(config)
  config = resolve_automatic_fields(config, log=True)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  test = lr_find.range_test(config, workdir, **range_test_args)
  if jax.process_index() == 0:
    (workdir / LR_FIND_JSON).write_text(json.dumps(test.to_json(), indent=2) + '\n')
    figures.save_png(figures.lr_find_figure(
        test.learning_rates, test.losses, test.smoothed_losses, test.suggestion, test.rule,
        minimum_rate=test.suggestions['minimum'] * 10), workdir / LR_FIND_PNG)
  return test


def train_and_report(config: ml_collections.ConfigDict, workdir: str, *,
                     allow_config_change: bool = False) -> dict:
  """`train_and_evaluate`, then WORKDIR/report/ when `config.evaluate.report_at_end`."""
  results = train_and_evaluate(config, workdir, allow_config_change=allow_config_change)
  command = f'`python -m jaxcls.cli.evaluate --workdir {workdir}`'
  if not config.evaluate.report_at_end:
    logging.info('config.evaluate.report_at_end=False: write the report with %s', command)
  elif jax.process_count() > 1:  # Restoring on one process of several would wait on the others.
    if jax.process_index() == 0:
      logging.info('multi-host run: write the report with %s', command)
  else:
    # Metrics tables and figures of the test split (logged, not raised, on error).
    report_finished_run(Path(workdir))
  if jax.process_index() == 0:  # results.json and the report to the MLflow and wandb runs.
    tracking.log_finished_run(config, workdir)
  return results
