"""What happens when things go wrong inside a run: clear stops, nothing good lost."""

import pytest
import jax
import orbax.checkpoint as ocp

from jaxcls.experiment import train_and_evaluate
from jaxcls.training import loop as train
from jaxcls.training.checkpointing import CheckpointSaveError
from jaxcls.config import ConfigError


def _diverging(config, nonfinite):
  """A learning rate no network survives: the loss is infinite within a few steps."""
  config.optimizer.learning_rate = 1e30
  config.optimizer.schedule = 'constant'
  config.optimizer.warmup_epochs = 0.0
  config.train.num_epochs = 1
  config.train.nonfinite = nonfinite
  return config


def test_a_non_finite_loss_stops_with_the_step_and_no_checkpoint(tiny_config, tmp_path):
  with pytest.raises(train.NonFiniteError, match=r'non-finite loss or gradient norm at step \d+; '
                     'no checkpoint holds it. The last run has no checkpoint yet'):
    train_and_evaluate(_diverging(tiny_config, 'stop'), str(tmp_path))
  assert not any(p.name.isdigit() for p in (tmp_path / 'checkpoints').iterdir())


@pytest.mark.slow
def test_skipped_non_finite_steps_leave_the_parameters_finite(tiny_config, tmp_path):
  results = train_and_evaluate(_diverging(tiny_config, 'skip'), str(tmp_path))
  state = ocp.StandardCheckpointer().restore(
      tmp_path / 'checkpoints' / str(results['best_step']) / 'state')
  assert all(bool(jax.numpy.isfinite(p).all()) for p in jax.tree.leaves(state['params']))


def test_a_workdir_of_another_config_is_refused_before_anything_changes(tiny_run_dir):
  from jaxcls.config import default_config  # pylint: disable=g-import-not-at-top
  from conftest import make_tiny  # pylint: disable=g-import-not-at-top
  config = make_tiny(default_config())
  config.optimizer.learning_rate = 0.05
  saved = (tiny_run_dir / 'config.json').read_text()
  with pytest.raises(ConfigError, match=r'holds a run with another config \(1 field\(s\) differ\):'
                     r'\n  optimizer.learning_rate: 0.1 -> 0.05\nTo resume that run'):
    train_and_evaluate(config, str(tiny_run_dir))
  assert (tiny_run_dir / 'config.json').read_text() == saved


def test_a_workdir_from_before_conv_lowering_resumes_and_reopens(tiny_run_dir, tmp_path):
  """model.conv_lowering changes how convolutions are computed, not the model: a saved config
  without it (or with the other value) is the same run."""
  import json  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  from jaxcls.training import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from jaxcls.config import default_config, resolve_automatic_fields  # pylint: disable=g-import-not-at-top
  from jaxcls.evaluation.reopen import load_run  # pylint: disable=g-import-not-at-top
  from conftest import make_tiny  # pylint: disable=g-import-not-at-top
  old = tmp_path / 'old'
  shutil.copytree(tiny_run_dir, old)
  saved = json.loads((old / 'config.json').read_text())
  del saved['model']['conv_lowering']
  for field in workdir_lib.NEWER_FIELDS:  # Nor the fields the pretrained registry brought.
    group, name = field.split('.')
    del saved[group][name]
  (old / 'config.json').write_text(json.dumps(saved))
  config = resolve_automatic_fields(make_tiny(default_config()))  # As train_and_evaluate does.
  workdir_lib.check_config(old, config, has_checkpoints=True)  # No ConfigError.
  config.model.conv_lowering = 'xla'
  workdir_lib.check_config(old, config, has_checkpoints=True)
  assert load_run(old).config.model.get('conv_lowering') is None  # And it reopens.
  # Where the saved config has a newer field, a change of it is a change of the run.
  config.data.missing_test = 'split'
  with pytest.raises(ConfigError, match=r"data.missing_test: 'val' -> 'split'"):
    workdir_lib.check_config(tiny_run_dir, config, has_checkpoints=True)


def test_a_train_split_smaller_than_one_batch_is_a_config_error(config, tmp_path):
  config.train.batch_size = 4096
  with pytest.raises(ConfigError, match=r'config.train.batch_size=4096: the train split has only '
                     r'1437 examples per epoch, fewer than one batch'):
    train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_a_failed_checkpoint_save_stops_training_and_keeps_older_checkpoints(
    tiny_config, tmp_path, monkeypatch):
  tiny_config.train.num_epochs = 2
  saves = []
  original = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    saves.append(step)
    if len(saves) == 2:
      raise OSError(28, 'No space left on device')
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  with pytest.raises(CheckpointSaveError, match=rf'of step {2 * 11} .*No space left on device.*'
                     'the older checkpoints there are untouched'):
    train_and_evaluate(tiny_config, str(tmp_path))
  assert sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()
                if p.name.isdigit()) == [11]


def test_out_of_memory_at_the_first_step_suggests_a_smaller_batch(config, tmp_path, monkeypatch):
  def jit_steps(*args, **kwargs):
    def train_fn(state, batch):
      raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to '
                                       'allocate 4.00GiB')
    return train_fn, None

  monkeypatch.setattr(train, 'jit_steps', jit_steps)
  with pytest.raises(ConfigError, match=r'config.train.batch_size=64: out of device memory at the '
                     r'first step; try --config.train.batch_size=32 or --config.model.dtype='
                     'bfloat16'):
    train_and_evaluate(config, str(tmp_path))
