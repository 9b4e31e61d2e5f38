"""Training logs to TensorBoard where TensorFlow imports, and to the console where it does not."""

import sys

import clu

from jaxcls.training import progress as writers


def test_tensorboard_events_are_written(tmp_path):
  writer = writers.create_writer(str(tmp_path), is_main_process=True)
  writer.write_scalars(3, {'train_loss': 0.5})
  writer.close()
  assert list(tmp_path.glob('events.out.tfevents.*'))


def test_falls_back_to_the_console_without_clu_writers(tmp_path, monkeypatch, caplog):
  for name in ('metric_writers', 'periodic_actions'):  # `import` of these now raises ImportError.
    monkeypatch.setitem(sys.modules, f'clu.{name}', None)
    monkeypatch.delattr(clu, name, raising=False)
  writer = writers.create_writer(str(tmp_path), is_main_process=True)
  assert isinstance(writer, writers.ConsoleWriter)
  with caplog.at_level('INFO'):
    writer.write_scalars(3, {'train_loss': 0.5})
    progress = writers.ProgressReporter(10, writer, every_secs=0.0)
    progress(1)
    progress(2)
  assert '[3] train_loss=0.5' in caplog.text
  assert 'steps/s' in caplog.text
  assert not list(tmp_path.glob('events.out.tfevents.*'))
