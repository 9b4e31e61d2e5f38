"""`python benchmarks/bench_train_step.py`: every path runs (smoke), and its figures mean what they say."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp('bench') / 'bench.json'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  completed = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'bench_train_step.py'), '--smoke', f'--json={out}'],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert completed.returncode == 0, completed.stderr[-3000:]
  return json.loads(out.read_text()), completed.stdout


def test_smoke_measures_every_dtype_device_count_and_pipeline(smoke):
  results, stdout = smoke
  steps = results['steps']
  assert {(r['dtype'], r['devices']) for r in steps} == {('bfloat16', 1), ('bfloat16', 2)}
  for row in steps:
    assert row['train_images_per_second'] > 0 and row['eval_images_per_second'] > 0, row
    assert row['compile_seconds'] > 0 and row['peak_memory_mib'] > 0, row
    assert row['batch_size'] == 8 * row['devices']  # Per-device batch 8: weak scaling.
  assert {p['pipeline'] for p in results['pipelines']} == {'memory', 'folder', 'device'}
  for row in results['pipelines']:
    assert row['input_images_per_second'] > 0 and row['end_to_end_images_per_second'] > 0, row
  assert {s['devices'] for s in results['scaling']} == {1, 2}
  assert all(s['efficiency'] > 0 for s in results['scaling'])
  assert 'train_img/s' in stdout and 'e2e/synthetic' in stdout and 'efficiency' in stdout


def test_flops_per_image_are_a_train_steps_and_do_not_depend_on_the_device_count(smoke):
  rows = {r['devices']: r['train_flops_per_image'] for r in smoke[0]['steps']}
  # XLA analyses the program one device runs: per image, the same on one device or two.
  assert rows[2] == pytest.approx(rows[1], rel=0.05)
  from jaxcls.models import create_model  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  model = create_model('cifar_resnet20', 10, width=4)
  model.eval()
  graph, state = nnx.split(model)
  forward = jax.jit(lambda s, x: nnx.merge(graph, s)(x)).lower(
      state, jnp.zeros((8, 16, 16, 3))).compile().cost_analysis()
  forward = (forward[0] if isinstance(forward, list) else forward)['flops'] / 8
  # Backward is about twice the forward pass: a train step is about three forwards.
  assert 2.5 < rows[1] / forward < 4.0, rows[1] / forward


def test_both_conv_lowerings_are_timed_and_count_the_networks_flops(tmp_path):
  """At 8x8 the CIFAR ResNet's last stage runs on 2x2 maps, where 'auto' lowers to patches on
  CPU; the FLOPs column stays the network's (taps on padding left out) for both rows."""
  out = tmp_path / 'bench.json'
  completed = subprocess.run(
      [sys.executable, str(ROOT / 'benchmarks' / 'bench_train_step.py'), '--models=cifar_resnet20', '--width=4',
       '--image_sizes=8', '--dtypes=float32', '--batch_sizes=4', '--num_classes=10',
       '--conv_lowerings=auto,xla', '--steps=1', '--repeats=1', '--warmup=1', f'--json={out}'],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
      timeout=600)
  assert completed.returncode == 0, completed.stderr[-3000:]
  rows = {r['variant']: r for r in json.loads(out.read_text())['steps']}
  assert set(rows) == {'jit', 'jit+xla_conv'}
  assert rows['jit']['train_flops_per_image'] == rows['jit+xla_conv']['train_flops_per_image']
  assert all(r['train_images_per_second'] > 0 for r in rows.values())
