"""benchmarks/bench_torch.py runs and writes its rows; its torch models are our JAX models.

The torch benchmark is only a fair twin of `python benchmarks/bench_train_step.py` if both time
the same network: the forward FLOPs of each torch reference, its convolutions
counted as XLA counts them (taps on padding left out), must be those XLA's cost
analysis gives the jaxcls model of the same name, and a neighbouring depth's
must not. The tolerance, `bench_torch.FLOPS_RTOL`, is for the elementwise ops
XLA counts and torch's FlopCounterMode does not.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import torch_resnet

LAUNCH = Path(__file__).resolve().parents[1] / 'benchmarks'
sys.path.insert(0, str(LAUNCH))
import bench_torch  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

KEYS = {'framework', 'model', 'image_size', 'dtype', 'batch_size', 'devices', 'variant',
        'compile_seconds', 'train_images_per_second', 'train_spread', 'eval_images_per_second',
        'peak_memory_mib', 'train_flops_per_image', 'forward_flops_per_image',
        'train_flops_per_image_all_taps', 'mfu', 'device', 'torch_version'}


def test_smoke_run_writes_rows(tmp_path):
  out = tmp_path / 'rows.json'
  result = subprocess.run(
      [sys.executable, str(LAUNCH / 'bench_torch.py'), '--smoke', f'--json={out}'],
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(out.read_text())
  assert [r['dtype'] for r in rows] == ['float32', 'bfloat16']
  for row in rows:
    assert set(row) == KEYS
    assert row['framework'] == 'torch' and row['model'] == 'cifar_resnet20'
    assert row['train_images_per_second'] > 0 and row['eval_images_per_second'] > 0
    # A train step costs about three forwards (no input gradient for the first conv).
    assert 2.5 < row['train_flops_per_image'] / row['forward_flops_per_image'] < 3.0
  assert 'cifar_resnet20' in result.stdout and 'train_img/s' in result.stdout


@pytest.mark.parametrize('name,num_classes,deeper', [
    ('resnet18', 1000, 'resnet34'),
    ('cifar_resnet20', 10, 'cifar_resnet32'),
])
def test_torch_reference_costs_the_jax_models_flops(name, num_classes, deeper):
  jax_flops = bench_torch.jax_forward_flops(name, num_classes, 32)

  def relative_difference(torch_name):
    torch_flops = bench_torch.forward_flops(
        torch_resnet.resnet(torch_name, num_classes=num_classes), 32, xla_convention=True)
    return abs(jax_flops / torch_flops - 1)

  assert relative_difference(name) <= bench_torch.FLOPS_RTOL
  assert relative_difference(deeper) > bench_torch.FLOPS_RTOL  # The check can fail.
