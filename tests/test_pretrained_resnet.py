"""Converted ResNets compute what the PyTorch originals compute; bad checkpoints fail loudly."""

import numpy as np
import pytest
import torch
from flax import nnx

from jaxcls.models import create_model
from jaxcls.pretrained import CheckpointMismatchError, load_state_dict, read_state_dict
from jaxcls.pretrained.checkpoint_files import CheckpointFileError

import parity
import torch_resnet


def _converted(name, num_classes=10, seed=0, **kwargs):
  torch.manual_seed(seed)
  reference = torch_resnet.resnet(name, num_classes=num_classes, **kwargs)
  parity.randomize_batch_norm_statistics(reference, seed)
  model = create_model(name, num_classes, **{k: v for k, v in kwargs.items() if k == 'width'})
  load_state_dict(model, parity.state_dict_numpy(reference))
  return reference, model


@pytest.mark.parametrize('name,size,kwargs', [
    ('resnet18', 64, {}),
    ('resnet34', 32, dict(width=8)),
    ('resnet50', 64, dict(width=16)),
    ('resnet101', 32, dict(width=8)),
    ('resnet152', 32, dict(width=4)),
    ('cifar_resnet20', 32, {}),
    ('cifar_resnet32', 16, dict(width=4)),
    ('cifar_resnet56', 16, dict(width=4)),
])
def test_logits_match_the_torch_reference(name, size, kwargs):
  reference, model = _converted(name, **kwargs)
  images = parity.random_images(4, size)
  expected = parity.torch_logits(reference, images)
  np.testing.assert_allclose(parity.flax_logits(model, images), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize('name', ['resnet34', 'resnet101', 'resnet152', 'cifar_resnet32'])
def test_every_depth_loads_strictly(name):
  """Full-size key sets and shapes, without the compute: shapes only on both sides."""
  with torch.device('meta'):
    reference = torch_resnet.resnet(name, num_classes=1000)
  state = {k: np.zeros(v.shape, np.float32) for k, v in reference.state_dict().items()}
  model = nnx.eval_shape(lambda: create_model(name, 1000))
  assert load_state_dict(model, state) == 'torchvision'


def test_new_head_keeps_the_backbone_and_its_own_initialisation():
  reference = torch_resnet.resnet('cifar_resnet20', num_classes=100)
  parity.randomize_batch_norm_statistics(reference)
  model = create_model('cifar_resnet20', 7, seed=3)
  fresh_head = np.asarray(model.fc.kernel[...])
  load_state_dict(model, parity.state_dict_numpy(reference), keep_head=False)
  np.testing.assert_array_equal(model.fc.kernel[...], fresh_head)
  np.testing.assert_allclose(model.conv1.kernel[...],
                             reference.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
  images = parity.random_images(2, 32)
  reference.fc = torch.nn.Identity()  # Its forward now returns the pooled features.
  model.eval()
  np.testing.assert_allclose(model.features(images), parity.torch_logits(reference, images),
                             atol=1e-4)


def test_wrong_architecture_names_the_unmatched_keys():
  state = parity.state_dict_numpy(torch_resnet.resnet('resnet18', num_classes=10))
  model = create_model('resnet34', 10)
  before = np.asarray(model.conv1.kernel[...])
  with pytest.raises(CheckpointMismatchError, match=r'model variables have no checkpoint tensor: '
                     r'.*layer1\.2\.conv1\.weight'):
    load_state_dict(model, state)
  np.testing.assert_array_equal(model.conv1.kernel[...], before)  # Nothing half-loaded.


def test_missing_and_extra_keys_are_listed():
  state = parity.state_dict_numpy(torch_resnet.resnet('cifar_resnet20', num_classes=10))
  del state['layer2.0.bn1.running_var']
  state['layer9.weight'] = np.zeros(3, np.float32)
  with pytest.raises(CheckpointMismatchError) as error:
    load_state_dict(create_model('cifar_resnet20', 10), state)
  assert 'layer2.0.bn1.running_var' in str(error.value)
  assert 'layer9.weight' in str(error.value)


def test_wrong_shapes_are_listed():
  state = parity.state_dict_numpy(torch_resnet.resnet('cifar_resnet20', num_classes=10))
  with pytest.raises(CheckpointMismatchError, match=r'fc\.weight: checkpoint shape'):
    load_state_dict(create_model('cifar_resnet20', 5), state, keep_head=True)
  del state['conv1.weight']
  with pytest.raises(CheckpointMismatchError, match=r'conv1\.weight'):
    load_state_dict(create_model('cifar_resnet20', 5), state)  # Only the head may be skipped.


def test_head_is_kept_exactly_when_it_fits():
  state = parity.state_dict_numpy(torch_resnet.resnet('cifar_resnet20', num_classes=10))
  same, other = create_model('cifar_resnet20', 10, seed=5), create_model('cifar_resnet20', 4, seed=5)
  fresh = np.asarray(other.fc.kernel[...])
  load_state_dict(same, state)
  load_state_dict(other, state)
  np.testing.assert_array_equal(same.fc.kernel[...], state['fc.weight'].T)
  np.testing.assert_array_equal(other.fc.kernel[...], fresh)


def test_checkpoint_files_round_trip(tmp_path):
  from safetensors.numpy import save_file
  reference = torch_resnet.resnet('cifar_resnet20', num_classes=10)
  torch.save({'state_dict': {f'module.{k}': v for k, v in reference.state_dict().items()}},
             tmp_path / 'model.pth')
  save_file({k: np.ascontiguousarray(v) for k, v in parity.state_dict_numpy(reference).items()},
            str(tmp_path / 'model.safetensors'))
  from_pth = read_state_dict(tmp_path / 'model.pth')
  from_safetensors = read_state_dict(tmp_path / 'model.safetensors')
  assert from_pth.keys() == from_safetensors.keys() == reference.state_dict().keys()
  for key, value in from_pth.items():
    np.testing.assert_array_equal(value, from_safetensors[key])


def test_truncated_and_unsafe_files_are_refused(tmp_path):
  reference = torch_resnet.resnet('cifar_resnet20', num_classes=10)
  torch.save(reference.state_dict(), tmp_path / 'full.pth')
  data = (tmp_path / 'full.pth').read_bytes()
  (tmp_path / 'truncated.pth').write_bytes(data[:len(data) // 2])
  with pytest.raises(CheckpointFileError, match='truncated.pth: cannot be read'):
    read_state_dict(tmp_path / 'truncated.pth')
  # A pickle that would create a file if it ran: refused, and the file never appears.
  marker = tmp_path / 'pwned'
  torch.save({'weights': reference.state_dict(), 'hook': _Unsafe(marker)}, tmp_path / 'unsafe.pth')
  with pytest.raises(CheckpointFileError, match='weights-only'):
    read_state_dict(tmp_path / 'unsafe.pth')
  with pytest.raises(CheckpointFileError, match='weights-only'):
    create_model('cifar_resnet20', 10, pretrained=str(tmp_path / 'unsafe.pth'))
  assert not marker.exists()
  (tmp_path / 'weights.h5').write_bytes(b'HDF')
  with pytest.raises(CheckpointFileError, match="unknown checkpoint kind '.h5'"):
    read_state_dict(tmp_path / 'weights.h5')
  with pytest.raises(CheckpointFileError, match='does not exist'):
    read_state_dict(tmp_path / 'nope.safetensors')


class _Unsafe:

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (open, (self.marker, 'w'))
