"""Evaluation of a trained run: the report every run leaves, TTA, ensembles and the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxcls import data
from jaxcls.evaluation import evaluate
from jaxcls.evaluation.reopen import load_run

REPORT_FILES = ('classification_report.md', 'classification_report.json',
                'confusion_matrix.png', 'confusion_matrix.csv', 'curves.png', 'misclassified.png')


@pytest.fixture(scope='module')
def run_dir(tiny_run_dir):
  return tiny_run_dir


@pytest.fixture(scope='module')
def best(run_dir):
  run = load_run(run_dir)
  source = data.load_dataset(run.config.data, str(run_dir)).test
  return run, source, evaluate.predict(run, source)


def test_training_leaves_a_report_whose_accuracy_is_the_test_accuracy(run_dir):
  results = json.loads((run_dir / 'results.json').read_text())
  for name in REPORT_FILES:
    assert (run_dir / 'report' / name).is_file(), name
  report = json.loads((run_dir / 'report' / 'classification_report.json').read_text())
  result = report['results'][report['primary']]
  assert result['accuracy'] == pytest.approx(results['test']['accuracy'], abs=1e-6)
  assert result['top5_accuracy'] == pytest.approx(results['test']['top5_accuracy'], abs=1e-6)
  assert report['checkpoints'] == [f'{run_dir}@{results["best_step"]}']


def test_report_pngs_are_valid_images(run_dir):
  for name in REPORT_FILES:
    if name.endswith('.png'):
      with Image.open(run_dir / 'report' / name) as image:
        image.verify()
      with Image.open(run_dir / 'report' / name) as image:
        assert min(image.size) >= 300, name


def test_tta_with_identity_views_equals_the_plain_result(best):
  run, source, (plain, labels) = best
  augmented, same_labels = evaluate.predict(run, source, views=(evaluate.View(),) * 3)
  np.testing.assert_allclose(augmented, plain, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(same_labels, labels)


def test_tta_views_keep_the_input_size_and_the_center_crop_is_the_image():
  images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
  views = evaluate.tta_views(flip=True, crops=5, padding=2)
  assert len(views) == 10
  assert all(view(images).shape == images.shape for view in views)
  np.testing.assert_array_equal(views[0](images), images)
  np.testing.assert_array_equal(views[1](images), images[:, :, ::-1])
  np.testing.assert_array_equal(views[2](images)[:, 2:, 2:], images[:, :-2, :-2])  # Top left.
  assert evaluate.tta_views(flip=False, crops=1, padding=2) == evaluate.IDENTITY


def test_tta_crops_other_than_1_or_5_are_a_config_error():
  with pytest.raises(ValueError, match=r'config\.evaluate\.tta_crops=3: expected 1 or 5'):
    evaluate.tta_views(flip=False, crops=3, padding=2)


def test_ensemble_of_one_checkpoint_equals_that_checkpoint(run_dir, best):
  run, _, (plain, _) = best
  steps, note = evaluate.top_checkpoint_steps(run_dir, run.config, 1)
  assert steps == [run.step] and note is None
  np.testing.assert_array_equal(evaluate.ensemble([plain]), plain)


def test_top_k_checkpoints_uses_those_on_disk_and_says_so(run_dir, best):
  run = best[0]
  steps, note = evaluate.top_checkpoint_steps(run_dir, run.config, 5)
  keep = run.config.checkpoint.keep  # The latest `keep` and the best, which may be among them.
  assert steps[0] == run.step and len(set(steps)) == len(steps) in (keep, keep + 1)
  assert f'only {len(steps)} are on disk' in note


def test_ensemble_reports_members_and_tta_beside_the_plain_result(run_dir, best, tmp_path):
  plain_accuracy = float((best[2][0].argmax(-1) == best[2][1]).mean())
  report = evaluate.evaluate_and_report([run_dir], output_dir=tmp_path, tta_flip=True,
                                        top_k_checkpoints=2)
  names = list(report['results'])
  assert report['primary'] == 'ensemble of 2 + TTA'
  assert len(names) == 6  # 2 members and the ensemble, each plain and with TTA.
  member = report['results'][names[0]]
  assert member['accuracy'] == pytest.approx(plain_accuracy)
  assert report['results'][names[1]]['tta'] == 'flip'
  assert (tmp_path / 'classification_report.md').read_text().count('ensemble of 2') >= 2


def test_runs_with_other_classes_cannot_be_ensembled(run_dir, tmp_path):
  other = tmp_path / 'other'
  other.mkdir()
  for name in ('config.json', 'splits.json'):
    (other / name).write_text((run_dir / name).read_text())
  (other / 'checkpoints').symlink_to(run_dir / 'checkpoints')
  best = load_run(run_dir)
  # Same checkpoints, a different split: the test examples differ.
  splits = json.loads((run_dir / 'splits.json').read_text())
  splits['test'] = splits['test'][1:] + splits['val'][:1]
  (other / 'splits.json').write_text(json.dumps(splits))
  with pytest.raises(ValueError, match='cannot ensemble .*the test splits differ|splits.json'):
    evaluate.evaluate([run_dir, other], step=best.step)


def test_cli_writes_the_report_files(run_dir, tmp_path):
  completed = subprocess.run(
      [sys.executable, '-m', 'jaxcls.cli.evaluate', '--workdir', str(run_dir), '--split', 'val',
       '--output_dir', str(tmp_path)], capture_output=True, text=True, timeout=300, check=False)
  assert completed.returncode == 0, completed.stderr[-2000:]
  assert f'report -> {tmp_path}' in completed.stdout
  for name in REPORT_FILES:
    assert (tmp_path / name).is_file(), name
  assert json.loads((tmp_path / 'classification_report.json').read_text())['split'] == 'val'


def test_cli_on_a_bad_workdir_is_a_clear_error(tmp_path):
  completed = subprocess.run(
      [sys.executable, '-m', 'jaxcls.cli.evaluate', '--workdir', str(tmp_path / 'nope')],
      capture_output=True, text=True, timeout=300, check=False)
  assert completed.returncode != 0
  assert f'{tmp_path / "nope"} is not a jaxcls workdir: no config.json' in completed.stderr


def test_evaluating_another_split_or_setting_leaves_the_runs_report_alone(run_dir):
  own = (run_dir / 'report' / 'classification_report.json').read_bytes()
  report = evaluate.evaluate_and_report([run_dir], split='val')
  assert report['output_dir'] == str(run_dir / 'report' / 'val')
  assert json.loads((run_dir / 'report' / 'val' / 'classification_report.json').read_text())[
      'split'] == 'val'
  assert (run_dir / 'report' / 'classification_report.json').read_bytes() == own
  assert json.loads(own)['split'] == 'test'


@pytest.mark.parametrize('kwargs,folder', [
    (dict(), ''), (dict(split='val'), 'val'), (dict(step=22), 'step_22'),
    (dict(split='val', step='latest'), 'val_step_latest'), (dict(tta_flip=True), 'tta_flip'),
    (dict(tta_flip=False, tta_crops=5), 'tta_noflip_5crops'), (dict(top_k_checkpoints=3), 'top_3'),
])
def test_each_evaluation_variant_has_its_own_report_folder(kwargs, folder):
  assert evaluate.report_variant(1, **kwargs) == folder
  assert evaluate.report_variant(2, **kwargs) == '_'.join(filter(None, ('ensemble', folder)))
