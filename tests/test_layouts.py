"""timm's and torchvision's EfficientNet-B0 and MobileNetV2 state dicts load and compute as theirs.

The most used B0 weights are timm's and torchvision's own PyTorch-trained ones,
which pad symmetrically with BatchNorm epsilon 1e-5 where TF's pad "SAME" with
1e-3: loaded into a model built for the other, they compute other logits
without any error. A raw file gets the constructor arguments of its detected
key layout (`jaxcls.models.registry.weights_arch_kwargs`), so
`create_model(name, pretrained=FILE)` computes what PyTorch computes. The
references are transcriptions in tests/torch_efficientnet.py (timm and
torchvision do not import here), with random weights and BatchNorm statistics.
"""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from jaxcls.models import create_model
from jaxcls.models.registry import create_model_with_info
from jaxcls.pretrained import CheckpointMismatchError

import parity
import torch_efficientnet

REFERENCES = {
    ('efficientnet_b0', 'timm'): lambda: torch_efficientnet.TimmEfficientNet('efficientnet-b0', 10),
    ('efficientnet_b0', 'torchvision'): lambda: torch_efficientnet.TorchvisionEfficientNet(
        'efficientnet-b0', 10),
    ('efficientnet_b0', 'efficientnet_pytorch'): lambda: torch_efficientnet.EfficientNet(
        'efficientnet-b0', num_classes=10, image_size=None),
    ('mobilenet_v2', 'timm'): lambda: torch_efficientnet.TimmMobileNetV2(10),
    ('mobilenet_v2', 'torchvision'): lambda: torch_efficientnet.MobileNetV2(10),
}
EXPECTED = {'timm': dict(padding='symmetric', batch_norm_epsilon=1e-5),
            'torchvision': dict(padding='symmetric', batch_norm_epsilon=1e-5),
            'efficientnet_pytorch': dict(padding='same', batch_norm_epsilon=1e-3)}


def _relative_error(model, reference) -> float:
  """Largest logit difference over the largest logit, on 64x64 inputs.

  Random networks give small logits (0.05-0.2) and "SAME" vs symmetric pads
  change them by about 0.1%: an absolute tolerance would not tell them apart.
  At 64 pixels the stride-2 layers' maps are small, so the pads matter.
  """
  images = parity.random_images(2, 64)
  expected = parity.torch_logits(reference, images)
  return float(np.abs(parity.flax_logits(model, images) - expected).max() /
               np.abs(expected).max())


def _saved(reference, path, seed):
  parity.randomize_batch_norm_statistics(reference, seed)
  save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
  return path


@pytest.mark.parametrize('arch,layout', list(REFERENCES))
def test_a_raw_file_builds_what_its_layout_needs_and_computes_the_reference(arch, layout,
                                                                           tmp_path):
  torch.manual_seed(7)
  reference = REFERENCES[arch, layout]()
  path = _saved(reference, tmp_path / 'weights.safetensors', seed=7)
  model, info = create_model_with_info(arch, 10, pretrained=str(path))
  assert info.layout == layout
  assert info.arch_kwargs == (EXPECTED[layout] if arch.startswith('efficientnet') else {})
  assert _relative_error(model, reference) < 1e-5  # Measured 3e-7 to 8e-7.


def test_timm_weights_in_a_model_built_for_tf_compute_other_logits(tmp_path):
  """What the detection prevents: no error, other logits."""
  torch.manual_seed(8)
  reference = torch_efficientnet.TimmEfficientNet('efficientnet-b0', 10)
  path = _saved(reference, tmp_path / 'timm_b0.safetensors', seed=8)
  wrong = create_model('efficientnet_b0', 10, pretrained=str(path), padding='same',
                       batch_norm_epsilon=1e-3)
  assert _relative_error(wrong, reference) > 1e-4  # Measured 1e-3: a hundred times the above.


def test_a_timm_mobilenet_v2_with_a_missing_tensor_names_it(tmp_path):
  torch.manual_seed(9)
  state = {k: v for k, v in torch_efficientnet.TimmMobileNetV2(10).state_dict().items()
           if k != 'blocks.3.2.conv_dw.weight'}
  save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / 'broken.safetensors'))
  with pytest.raises(CheckpointMismatchError, match=r'as timm: 1 model variables have no checkpoint tensor: features\.9\.conv\.1\.0\.weight'):
    create_model('mobilenet_v2', 10, pretrained=str(tmp_path / 'broken.safetensors'))
