"""launch/gpu_suite.py: every part runs on a CPU (--smoke) and measures what its table says;
a part that does not fit in the budget is skipped, not started; two runs merge into one report;
jaxcls/launch/trace_summary.py sums a device trace as it says."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'launch'))
import gpu_suite  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import gpu_suite_report  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from jaxcls.launch import trace_summary  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp('suite')
  completed = subprocess.run(
      [sys.executable, str(ROOT / 'launch' / 'gpu_suite.py'), '--smoke', f'--out={out}'],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
      timeout=1200)
  assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-3000:]
  return json.loads((out / 'suite.json').read_text()), (out / 'suite.md').read_text(), out


@pytest.mark.slow
def test_smoke_runs_every_part_and_keeps_its_log(smoke):
  results, _, out = smoke
  assert {n: r['status'] for n, r in results['parts'].items()} == {
      p.name: 'ok' for p in gpu_suite.PARTS}
  log = (out / 'suite.log').read_text()
  for record in results['parts'].values():
    for call in record['calls']:
      assert f'### {call["label"]}: exit 0 after' in log


@pytest.mark.slow
def test_smoke_measures_steps_pipelines_strategies_and_real_runs(smoke):
  parts = smoke[0]['parts']
  assert parts['env']['rows']['matmul_tflops'] > 0
  (step,) = parts['resnet50']['rows']['steps']
  assert step['train_images_per_second'] > 0 and step['eval_images_per_second'] > 0
  assert 'trace' in step  # On a CPU it says there is no device plane.
  pipelines = {(p['pipeline'], p['num_threads']) for p in parts['resnet50']['rows']['pipelines']}
  smoke_threads = gpu_suite.SMOKE.threads
  assert pipelines == {(kind, n) for kind in ('memory', 'folder') for n in smoke_threads} | {
      ('device', smoke_threads[0])}
  assert [r['variant'] for r in parts['torch_resnet50']['rows']] == ['eager+cl']
  assert {r['dtype'] for r in parts['resnet50_more']['rows']['steps']} == {'float32', 'bfloat16'}
  flops = {r['strategy']: r['flops'] for r in parts['finetune']['rows']}
  # Frozen groups cost no backward pass: the fewer groups train, the fewer FLOPs.
  assert flops['feature_extraction'] < flops['partial'] < flops['full']
  cifar = parts['cifar10']
  assert [r['strategy'] for r in cifar['rows']] == list(gpu_suite.SMOKE.cifar_rows)
  assert cifar['synthetic']['train_images_per_second'] > 0
  for row in cifar['rows']:
    assert 0 <= row['test_accuracy'] <= 1 and row['train_images_per_second'] > 0
    assert row['num_examples']['test'] == 10 * (gpu_suite.SMOKE.cifar_per_class // 5 + 1)
  gradual = next(r for r in cifar['rows'] if r['strategy'] == 'gradual')
  assert [p['epoch'] for p in gradual['phases']] == [0, 1]  # The head, then one more group.


@pytest.mark.slow
def test_report_tables_show_the_measured_figures_and_ratios(smoke):
  results, md, _ = smoke
  for title in ('Train and eval steps', 'Input pipelines', 'Fine-tuning strategies', 'CIFAR-10',
                'Parts'):
    assert f'### {title}' in md
  step = results['parts']['resnet50']['rows']['steps'][0]
  eager = results['parts']['torch_resnet50']['rows'][0]
  ratio = step['train_images_per_second'] / eager['train_images_per_second']
  assert f'| {step["train_images_per_second"]:.1f} |' in md
  assert f'| {ratio:.2f}x |' in md


def test_a_part_that_does_not_fit_the_budget_is_skipped_not_started(tmp_path, capsys):
  assert gpu_suite.main(['--smoke', f'--out={tmp_path}', '--budget_s=5', '--parts=resnet50']) == 0
  results = json.loads((tmp_path / 'suite.json').read_text())
  (name, record), = results['parts'].items()
  assert name == 'resnet50' and record['status'] == 'skipped'
  assert record['reason'].endswith(' s of the budget left')
  assert '| resnet50 | skipped |' in (tmp_path / 'suite.md').read_text()
  assert 'bench_train_step' not in (tmp_path / 'suite.log').read_text()
  assert 'resnet50: skipped' in capsys.readouterr().out


def test_an_unknown_part_is_refused_with_the_known_ones(tmp_path, capsys):
  with pytest.raises(SystemExit):
    gpu_suite.main([f'--out={tmp_path}', '--parts=resnet50,resnet99'])
  error = capsys.readouterr().err
  assert "unknown ['resnet99']" in error and 'torch_resnet50' in error


def _steps_record(rate: float) -> dict:
  row = dict(framework='jax', model='resnet50', image_size=224, dtype='bfloat16',
             batch_size=256, devices=1, variant='jit', compile_seconds=20.0,
             train_images_per_second=rate, train_spread=1.0, eval_images_per_second=2 * rate,
             peak_memory_mib=1000.0, train_flops_per_image=24.6e9, mfu=0.1)
  return dict(status='ok', seconds=1.0, calls=[], rows=dict(steps=[row], pipelines=[],
                                                            scaling=[]))


def test_merged_runs_show_each_runs_rows_side_by_side():
  runs = [dict(meta=dict(started='a', command='first'), parts={'resnet50': _steps_record(1000.0)}),
          dict(meta=dict(started='b', command='second'),
               parts={'resnet50': _steps_record(1500.0)})]
  merged = gpu_suite_report.merge(runs)
  assert list(merged['parts']) == ['resnet50', 'resnet50#2']
  md = gpu_suite_report.markdown(merged)
  assert '| resnet50 | 224 | bfloat16 | 256 | 1000.0 |' in md
  assert '| resnet50 (run 2) | 224 | bfloat16 | 256 | 1500.0 |' in md
  assert 'Run 1: a, `first`' in md and 'Run 2: b, `second`' in md


def test_device_trace_summary_counts_busy_time_and_categories():
  ms = 1_000_000
  lines = {
      # Two steps of 8 ms, 2 ms apart: busy 16 of 18 ms.
      'XLA Modules': [('jit_train(1)', 0, 8 * ms), ('jit_train(2)', 10 * ms, 8 * ms)],
      'XLA Ops': [('cudnn-conv.3', 0, 5 * ms), ('loop_add_fusion', 5 * ms, 2 * ms),
                  ('cublas-gemm.1', 7 * ms, 1 * ms), ('cudnn-conv.3', 10 * ms, 5 * ms),
                  ('copy.7', 15 * ms, 1 * ms), ('reduce.2', 16 * ms, 2 * ms)],
  }
  summary = trace_summary._device_summary(lines, top=3)  # pylint: disable=protected-access
  assert summary['modules']['count'] == 2
  assert summary['modules']['busy_fraction'] == pytest.approx(16 / 18)
  assert summary['modules']['names'] == [('jit_train', 2)]
  shares = {k: v['fraction'] for k, v in summary['categories'].items()}
  assert shares == pytest.approx({'convolution': 10 / 16, 'fusion': 2 / 16, 'reduction': 2 / 16,
                                  'matmul': 1 / 16, 'copy/transpose': 1 / 16})
  assert summary['top_ops'][0] == dict(name='cudnn-conv.3', ms=10.0, count=2, fraction=10 / 16)
  assert 'device busy 88.9%' in trace_summary.format_summary(
      dict(devices={'/device:GPU:0': summary}))


def test_a_cpu_trace_has_no_device_plane_to_summarise(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  square = jax.jit(lambda x: x @ x)
  square(jnp.ones((64, 64))).block_until_ready()
  jax.profiler.start_trace(str(tmp_path))
  square(jnp.ones((64, 64))).block_until_ready()
  jax.profiler.stop_trace()
  summary = trace_summary.summarize(tmp_path)
  assert summary['devices'] == {} and 'no accelerator plane' in summary['note']
  assert any(plane['name'].startswith('/host:CPU') for plane in summary['planes'])
