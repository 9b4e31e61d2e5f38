"""`jaxcls COMMAND`: the installed entry point, from a wheel installed away from the checkout."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Digits at 16x16, 4 steps of 128, one epoch, no report: seconds.
TINY = ['--config.data.image_size=16', '--config.train.num_epochs=1',
        '--config.train.batch_size=128', '--config.optimizer.warmup_epochs=0.0',
        '--config.data.epoch_examples=512', '--config.evaluate.report_at_end=False']


def _jaxcls(*args, cwd, env=None, timeout=600):
  return subprocess.run([sys.executable, '-m', 'jaxcls', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_command_and_suite(tmp_path):
  out = _jaxcls('--help', cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  for command in ('train', 'lr-find', 'evaluate', 'predict', 'explain', 'convert', 'sweep',
                  'summarize', 'ablate', 'bench'):
    assert f'\n  {command} ' in out.stdout
  assert 'finetune_strategies' in out.stdout
  bad = _jaxcls('trian', cwd=tmp_path)
  assert bad.returncode != 0 and "unknown command 'trian'" in bad.stderr
  suite = _jaxcls('ablate', 'finetune_strategies', '--help', cwd=tmp_path)
  assert suite.returncode == 0 and 'usage: jaxcls ablate finetune_strategies' in suite.stdout


def test_a_config_that_is_nowhere_is_named_with_the_shipped_ones(tmp_path):
  out = _jaxcls('train', '--config', 'nope.py', '--workdir', str(tmp_path / 'run'), cwd=tmp_path)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1].startswith('jaxcls: --config nope.py: no such file')
  assert 'default.py' in out.stderr and not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_installed_wheel_runs_sweeps_and_trains_outside_the_checkout(tmp_path):
  """`pip install .` (the wheel, not the checkout): its console script has every subcommand,
  the shipped configs and sweeps travel inside it, and a config file of the user's trains."""
  site = tmp_path / 'site'
  build = ['--no-build-isolation'] if _has_setuptools() else []
  pip = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', *build,
                        '--target', str(site), str(REPO)], capture_output=True, text=True,
                       timeout=600)
  assert pip.returncode == 0, pip.stderr[-2000:]
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  env = dict(os.environ, PYTHONPATH=str(site))
  script = site / 'bin' / 'jaxcls'

  def jaxcls(*args):
    return subprocess.run([str(script), *args], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=600)

  where = subprocess.run([sys.executable, '-c', 'import jaxcls; print(jaxcls.__file__)'],
                         cwd=elsewhere, env=env, capture_output=True, text=True)
  assert Path(where.stdout.strip()).is_relative_to(site)  # The wheel, not the checkout.
  help_ = jaxcls('sweep', '--help')
  assert help_.returncode == 0 and 'usage: jaxcls sweep' in help_.stdout
  listed = jaxcls('sweep', '--config', 'default.py', '--sweep', 'lr_width', '--root', 'r',
                  '--dry_run')
  assert listed.returncode == 0 and 'learning_rate=' in listed.stdout, listed.stderr
  (elsewhere / 'mine.py').write_text(
      'from jaxcls.config import default_config\n\n\n'
      'def get_config():\n  config = default_config()\n  config.model.width = 4\n'
      '  return config\n')
  trained = jaxcls('train', '--config', 'mine.py', '--workdir', 'run', *TINY)
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert 'test accuracy' in trained.stdout and (elsewhere / 'run' / 'results.json').is_file()


def _has_setuptools() -> bool:
  try:
    import setuptools  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return int(setuptools.__version__.split('.')[0]) >= 68
