"""Shared fixtures; `--runslow` also runs the tests marked slow (minutes of training)."""

import os
import tempfile

import pytest
from absl import logging as absl_logging

# One persistent XLA compilation cache for the session, both xdist workers and the
# subprocesses they start (`python -m jaxcls.main` restarted four times by the kill/resume
# test, the CLIs): the same tiny programs compile once. Set before JAX is imported.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'jaxcls-tests-xla-cache'))

from jaxcls.config import default_config


def pytest_addoption(parser):
  parser.addoption('--runslow', action='store_true', help='also run tests marked slow')


# Files of several minutes each, run first: with two files at a time (pytest-xdist
# `--dist loadfile`) none of them is then left running alone at the end.
LONGEST_FIRST = ('test_real_photos.py', 'test_gpu_suite.py', 'test_train.py',
                 'test_finetune_transfer.py', 'test_multihost.py', 'test_optuna_sweep.py',
                 'test_sweep.py', 'test_cli.py', 'test_tracking.py', 'test_finetune.py')


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable: files stay whole.
  if config.getoption('--runslow'):
    return
  skip = pytest.mark.skip(reason='slow: run with --runslow')
  for item in items:
    if 'slow' in item.keywords:
      item.add_marker(skip)


# absl's logger level when the session began (NOTSET: the root logger, which caplog sets, decides).
_ABSL_LEVEL = absl_logging.get_absl_logger().level


@pytest.fixture(autouse=True)
def _absl_verbosity():
  """Each test starts with absl's logger as the session began: the CLIs quieten it for the
  whole process, and a module-scoped fixture that runs one would otherwise hide every later
  test's INFO logs from caplog."""
  absl_logging.get_absl_logger().setLevel(_ABSL_LEVEL)
  yield


@pytest.fixture
def config():
  """The default config (configs/default.py), fresh for each test."""
  return default_config()


def make_tiny(config):
  """Digits at 16x16 through a 4-channel CIFAR ResNet-20: seconds per epoch on a CPU."""
  config.data.image_size = 16
  config.model.width = 4
  config.train.num_epochs = 3
  config.train.batch_size = 128
  config.train.log_every_steps = 5
  config.optimizer.warmup_epochs = 0.5
  config.evaluate.report_at_end = False  # Tests of the report turn it back on.
  return config


@pytest.fixture
def tiny_config(config):
  return make_tiny(config)


@pytest.fixture(scope='session')
def tiny_run_dir(tmp_path_factory):
  """One finished tiny run (3 epochs), shared by the tests of the tools that read workdirs."""
  from jaxcls.experiment import train_and_report  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('tiny_run')
  config = make_tiny(default_config())
  config.evaluate.report_at_end = True  # tests/test_evaluate.py reads it.
  train_and_report(config, str(workdir))
  return workdir
