"""From a PyTorch file to a trained model: convert CLI, create_model(pretrained=), the trainer."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from jaxcls.config import resolve_automatic_fields
from jaxcls.models import create_model
from jaxcls.pretrained import CheckpointMismatchError

import parity
import torch_resnet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """A random-weight CIFAR ResNet-20 saved as .pth and .safetensors."""
  torch.manual_seed(0)
  model = torch_resnet.resnet('cifar_resnet20', num_classes=10)
  parity.randomize_batch_norm_statistics(model)
  model.eval()
  directory = tmp_path_factory.mktemp('weights')
  torch.save(model.state_dict(), directory / 'resnet20.pth')
  save_file({k: v.contiguous() for k, v in model.state_dict().items()},
            str(directory / 'resnet20.safetensors'))
  return model, directory


@pytest.fixture(scope='module')
def converted(reference):
  _, directory = reference
  out = directory / 'converted'
  result = subprocess.run(
      [sys.executable, '-m', 'jaxcls.cli.convert', '--model=cifar_resnet20',
       f'--src={directory / "resnet20.pth"}', f'--out={out}', '--input_size=16', '--crop_pct=1.0',
       '--mean=0.4,0.4,0.4', '--std=0.2,0.2,0.2'], cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return out


def test_convert_writes_state_and_metadata(reference, converted):
  _, directory = reference
  metadata = json.loads((converted / 'pretrained.json').read_text())
  assert metadata['arch'] == 'cifar_resnet20'
  assert metadata['num_classes'] == 10
  assert metadata['layout'] == 'torchvision'
  assert metadata['sha256'] == hashlib.sha256((directory / 'resnet20.pth').read_bytes()).hexdigest()
  assert (metadata['input_size'], metadata['mean']) == (16, [0.4, 0.4, 0.4])
  assert (converted / 'state').is_dir()


@pytest.mark.parametrize('source', ['converted', 'resnet20.pth', 'resnet20.safetensors'])
def test_create_model_pretrained_computes_the_reference(reference, converted, source):
  torch_model, directory = reference
  path = converted if source == 'converted' else directory / source
  model = create_model('cifar_resnet20', 10, pretrained=str(path))
  images = parity.random_images(3, 16)
  np.testing.assert_allclose(parity.flax_logits(model, images),
                             parity.torch_logits(torch_model, images), atol=1e-4)


def test_new_number_of_classes_gets_a_fresh_head(reference, converted):
  torch_model, _ = reference
  model = create_model('cifar_resnet20', 3, pretrained=str(converted))
  assert model.fc.kernel.shape == (64, 3)
  np.testing.assert_allclose(model.conv1.kernel[...],
                             torch_model.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))


def test_weights_of_another_architecture_are_refused(converted):
  with pytest.raises(CheckpointMismatchError, match='holds cifar_resnet20 weights, not cifar_resnet32'):
    create_model('cifar_resnet32', 10, pretrained=str(converted))


def test_convert_reports_a_bad_checkpoint(tmp_path):
  (tmp_path / 'broken.safetensors').write_bytes(b'not a checkpoint')
  result = subprocess.run(
      [sys.executable, '-m', 'jaxcls.cli.convert', '--model=resnet18',
       f'--src={tmp_path / "broken.safetensors"}', f'--out={tmp_path / "out"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert 'broken.safetensors: not a readable safetensors file' in result.stderr
  assert not (tmp_path / 'out').exists()


def test_input_size_and_normalisation_follow_the_weights(reference, converted, config):
  config.model.pretrained = str(converted)
  resolved = resolve_automatic_fields(config)
  assert (resolved.data.image_size, resolved.data.resize_size) == (16, 16)
  assert tuple(resolved.data.mean) == (0.4, 0.4, 0.4)
  config.model.pretrained = str(reference[1] / 'resnet20.pth')  # Raw file: ImageNet conventions.
  resolved = resolve_automatic_fields(config)
  assert (resolved.data.image_size, resolved.data.resize_size) == (224, 256)
  assert tuple(resolved.data.std) == (0.229, 0.224, 0.225)
  config.data.image_size, config.data.mean = 64, (0.1, 0.2, 0.3)  # The config wins.
  resolved = resolve_automatic_fields(config)
  assert (resolved.data.image_size, tuple(resolved.data.mean)) == (64, (0.1, 0.2, 0.3))
  config.model.pretrained = None
  resolved = resolve_automatic_fields(config)
  assert tuple(resolved.data.std) == (0.25, 0.25, 0.25)
