"""The VGG family: torchvision's parameter counts, key layout and logits; the GAP head; training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxcls.models import create_model, list_models
from jaxcls.models.vgg import adaptive_avg_pool
from jaxcls.pretrained import load_state_dict

import jitted
import parity
import torch_vgg

VARIANTS = ['vgg11', 'vgg11_bn', 'vgg13', 'vgg13_bn', 'vgg16', 'vgg16_bn', 'vgg19', 'vgg19_bn']


def num_params(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _reference(name, num_classes=10, width=8, seed=0):
  """Random torch weights at a scale that gives O(1) logits (torchvision's init gives ~0.01)."""
  torch.manual_seed(seed)
  reference = torch_vgg.vgg(name, num_classes, width=width)
  parity.randomize_batch_norm_statistics(reference, seed)
  with torch.no_grad():
    for m in reference.modules():
      if isinstance(m, torch.nn.Linear):
        m.weight.normal_(0, 2 / m.in_features**0.5)
      if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
        m.bias.normal_(0, 0.1)
  return reference


def _converted(name, num_classes=10, width=8, **kwargs):
  reference = _reference(name, num_classes, width)
  model = create_model(name, num_classes, width=width, **kwargs)
  load_state_dict(model, parity.state_dict_numpy(reference), keep_head=True)
  return reference, model


def test_registry_lists_every_variant():
  assert set(VARIANTS) <= set(list_models())


@pytest.mark.parametrize('name,expected', [
    ('vgg11', 132_863_336), ('vgg11_bn', 132_868_840), ('vgg13', 133_047_848),
    ('vgg13_bn', 133_053_736), ('vgg16', 138_357_544), ('vgg16_bn', 138_365_992),
    ('vgg19', 143_667_240), ('vgg19_bn', 143_678_248),
])
def test_parameter_counts_match_torchvision(name, expected):
  model = nnx.eval_shape(lambda: create_model(name, 1000))
  assert num_params(model) == expected


@pytest.mark.parametrize('name', VARIANTS)
def test_logits_match_the_torch_reference(name):
  reference, model = _converted(name)
  images = parity.random_images(2, 32)
  expected = parity.torch_logits(reference, images)
  assert np.abs(expected).max() > 0.1  # A comparison of near-zero logits would prove little.
  np.testing.assert_allclose(parity.flax_logits(model, images), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize('size', [
    96,   # A 3x3 map spread over 7x7 cells (windows repeat).
    288,  # 9x9 -> 7x7: overlapping windows.
    224,  # 7x7: the identity.
])
def test_logits_match_at_other_input_sizes(size):
  reference, model = _converted('vgg11_bn')
  images = parity.random_images(2, size)
  np.testing.assert_allclose(parity.flax_logits(model, images),
                             parity.torch_logits(reference, images), atol=1e-4, rtol=0)


@pytest.mark.parametrize('in_size,out_size', [
    ((7, 7), 7), ((14, 21), 7), ((1, 1), 7), ((3, 5), 7), ((9, 10), 7), ((13, 20), 7), ((5, 5), 1),
])
def test_adaptive_pooling_matches_torch(in_size, out_size):
  x = np.random.default_rng(0).standard_normal((2, *in_size, 3)).astype(np.float32)
  expected = torch.nn.functional.adaptive_avg_pool2d(
      torch.from_numpy(x).permute(0, 3, 1, 2), out_size).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(adaptive_avg_pool(jnp.asarray(x), out_size), expected, atol=1e-6)


@pytest.mark.parametrize('name', VARIANTS)
def test_every_variant_loads_strictly(name):
  """Full-size key sets and shapes, without the compute: shapes only on both sides."""
  with torch.device('meta'):
    reference = torch_vgg.vgg(name, num_classes=1000)
  state = {k: np.zeros(v.shape, np.float32) for k, v in reference.state_dict().items()}
  model = nnx.eval_shape(lambda: create_model(name, 1000))
  assert load_state_dict(model, state, keep_head=True) == 'torchvision'


def test_default_dropout_model_loads_its_classifier():
  reference = _reference('vgg11', width=8)
  model = create_model('vgg11', 10, width=8)
  load_state_dict(model, parity.state_dict_numpy(reference), keep_head=True)
  np.testing.assert_array_equal(model.classifier.layers[6].kernel[...],
                                reference.classifier[6].weight.detach().numpy().T)


def test_new_classifier_keeps_the_backbone_and_its_own_initialisation():
  reference = _reference('vgg11_bn', num_classes=100)
  model = create_model('vgg11_bn', 7, width=8, seed=3)
  fresh_head = np.asarray(model.classifier.layers[0].kernel[...])
  load_state_dict(model, parity.state_dict_numpy(reference), keep_head=False)
  np.testing.assert_array_equal(model.classifier.layers[0].kernel[...], fresh_head)
  images = parity.random_images(2, 32)
  reference.classifier = torch.nn.Identity()  # Its forward now returns the flattened 7x7 map.
  model.eval()
  np.testing.assert_allclose(model.features(images), parity.torch_logits(reference, images),
                             atol=1e-4)


def test_gap_head_pools_globally_into_one_linear_layer():
  model = create_model('vgg16_bn', 10, width=8, head='gap')
  x = jnp.ones((2, 32, 32, 3))
  assert model.head_name == 'fc' and not hasattr(model, 'classifier')
  assert model.features(x).shape == (2, 64)
  assert model(x).shape == (2, 10)
  assert num_params(model) == num_params(
      create_model('vgg16_bn', 10, width=8, head='gap', dropout_rate=0.0))  # No dropout RNG.


def test_gap_head_loads_a_torchvision_backbone_and_keeps_its_fresh_head():
  reference = _reference('vgg11_bn')
  model = create_model('vgg11_bn', 5, width=8, head='gap', seed=3)
  fresh_head = np.asarray(model.fc.kernel[...])
  assert load_state_dict(model, parity.state_dict_numpy(reference),
                         keep_head=False) == 'torchvision_features'
  np.testing.assert_array_equal(model.fc.kernel[...], fresh_head)
  images = parity.random_images(2, 64)
  model.eval()
  reference.eval()
  with torch.no_grad():
    expected = reference.features(torch.from_numpy(images).permute(0, 3, 1, 2)).mean((2, 3))
  np.testing.assert_allclose(model.features(images), expected.numpy(), atol=1e-4)


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_parameters():
  model = create_model('vgg11_bn', 10, width=8, dtype='bfloat16')
  model.eval()
  assert model(jnp.ones((2, 32, 32, 3))).dtype == jnp.bfloat16
  assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype('float32')}


def test_dropout_is_active_in_train_mode_only():
  model = create_model('vgg11', 10, width=8)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  model.eval()
  np.testing.assert_array_equal(model(x), model(x))
  model.train()
  assert not np.allclose(model(x), model(x))


def test_jitted_train_step_runs_with_dropout_and_batch_norm(config):
  model = create_model('vgg11_bn', 10, width=8)
  state, train_fn, eval_fn = jitted.steps_for(model, config.optimizer)
  batch = jitted.random_batch(8, 32)
  count = lambda s: int(s.model_state['classifier']['layers'][2]['rngs']['count'][...])  # noqa: E731
  before = count(state)
  state, metrics = train_fn(state, batch)
  assert np.isfinite(metrics.compute()['loss'])
  assert count(state) == before + 1  # The dropout stream advances: a new mask every step.
  assert np.isfinite(eval_fn(state, batch).compute()['loss'])
