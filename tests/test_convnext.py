"""ConvNeXts: torchvision's sizes and keys, parity with torchvision and timm, stochastic depth.

Eager JAX compiles each new operation shape once (up to a second each on a
small CPU, random initialisers the slowest), so the parity tests share one
small model whose values all come from a torch reference, the stochastic
depth tests use one width throughout, and full-size models and dtypes are
checked on shapes only (`nnx.eval_shape`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxcls.models import create_model, list_models
from jaxcls.pretrained import load_state_dict

import jitted
import parity
import torch_convnext

SMALL = dict(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64))
UNIFORM = dict(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8))  # Few distinct shapes to initialise.
NAMES = ['convnext_tiny', 'convnext_small', 'convnext_base', 'convnext_large']
SIZE, BATCH = 64, 4  # At 64 the last stage sees 2x2, so its 7x7 depthwise conv mixes positions.


@functools.cache
def _small_model():
  """Shapes from `nnx.eval_shape`, values from a torch reference: no initialiser to compile.

  The tests below load other checkpoints into it; each load sets every
  variable the test compares.
  """
  model = nnx.eval_shape(lambda: create_model('convnext_tiny', 10, **SMALL))
  load_state_dict(model, parity.state_dict_numpy(_torchvision_reference(seed=5)))
  return model


@functools.cache
def _abstract(name):
  """The full-size model's graph and its state of shapes, traced once per size."""
  return nnx.split(nnx.eval_shape(lambda: create_model(name, 1000)))


def num_params(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _torchvision_reference(num_classes=10, seed=0):
  torch.manual_seed(seed)
  reference = torch_convnext.ConvNeXt(num_classes=num_classes, **SMALL)
  torch_convnext.randomize(reference, seed)
  return reference


def test_registry_lists_the_four_sizes():
  assert set(NAMES) <= set(list_models())


# torchvision.models.convnext_*(num_classes=1000) parameter counts (torchvision's docs).
@pytest.mark.parametrize('name,expected', [
    ('convnext_tiny', 28_589_128),
    ('convnext_small', 50_223_688),
    ('convnext_base', 88_591_464),
    ('convnext_large', 197_767_336),
])
def test_parameter_counts_match_torchvision(name, expected):
  model = nnx.merge(*_abstract(name))
  assert num_params(model) == expected


def test_downsamples_by_32_and_features_are_the_linear_input():
  model = _small_model()
  model.eval()
  x = jnp.ones((BATCH, SIZE, SIZE, 3))
  assert model(x).shape == (BATCH, 10)
  assert model.features(x).shape == (BATCH, 64)
  np.testing.assert_allclose(model.classifier.layers[2](model.features(x)), model(x), atol=1e-6)


def test_logits_match_torchvision():
  reference = _torchvision_reference()
  model = _small_model()
  assert load_state_dict(model, parity.state_dict_numpy(reference)) == 'torchvision'
  images = parity.random_images(BATCH, SIZE)
  np.testing.assert_allclose(parity.flax_logits(model, images),
                             parity.torch_logits(reference, images), atol=1e-4, rtol=0)


def test_logits_match_timm():
  torch.manual_seed(1)
  reference = torch_convnext.TimmConvNeXt(num_classes=10, **SMALL)
  torch_convnext.randomize(reference, 1)
  state = parity.state_dict_numpy(reference)
  assert state['stages.1.blocks.0.gamma'].shape == (16,)
  model = _small_model()
  assert load_state_dict(model, state) == 'timm'
  images = parity.random_images(BATCH, SIZE)
  np.testing.assert_allclose(parity.flax_logits(model, images),
                             parity.torch_logits(reference, images), atol=1e-4, rtol=0)


@pytest.mark.parametrize('name', NAMES)
def test_every_size_loads_strictly(name):
  """Full-size key sets and shapes, without the compute: shapes only on both sides."""
  with torch.device('meta'):
    reference = torch_convnext.convnext(name, num_classes=1000)
  state = {k: np.zeros(v.shape, np.float32) for k, v in reference.state_dict().items()}
  model = nnx.merge(*_abstract(name))
  assert load_state_dict(model, state) == 'torchvision'


def test_timm_key_sets_load_strictly():
  """convnext_small: stage 2's 27 blocks check two-digit block indices too."""
  depths, dims = torch_convnext.SIZES['convnext_small']
  with torch.device('meta'):
    reference = torch_convnext.TimmConvNeXt(depths, dims, num_classes=1000)
  state = {k: np.zeros(v.shape, np.float32) for k, v in reference.state_dict().items()}
  model = nnx.merge(*_abstract('convnext_small'))
  assert load_state_dict(model, state, layout='timm') == 'timm'


def test_checkpoints_load_into_a_model_with_stochastic_depth():
  """Its RNG state is no weight: the loader neither asks the checkpoint for it nor touches it."""
  model = nnx.eval_shape(lambda: create_model('convnext_tiny', 10, drop_path_rate=0.1, **SMALL))
  assert jax.tree.leaves(nnx.state(model, nnx.RngState))
  assert load_state_dict(model, parity.state_dict_numpy(_torchvision_reference())) == 'torchvision'


def test_new_head_replaces_only_the_linear():
  reference = _torchvision_reference(num_classes=100, seed=2)
  model = _small_model()  # 10 classes: the checkpoint's 100-class Linear cannot fit.
  fresh_head = np.asarray(model.classifier.layers[2].kernel[...])
  load_state_dict(model, parity.state_dict_numpy(reference), keep_head=False)
  np.testing.assert_array_equal(model.classifier.layers[2].kernel[...], fresh_head)
  np.testing.assert_array_equal(model.classifier.layers[0].scale[...],
                                reference.classifier[0].weight.detach().numpy())
  images = parity.random_images(BATCH, SIZE)
  reference.classifier[2] = torch.nn.Identity()  # Its forward now returns the normed features.
  model.eval()
  np.testing.assert_allclose(model.features(images), parity.torch_logits(reference, images),
                             atol=1e-4)


def test_stochastic_depth_is_random_in_train_mode_only():
  model = create_model('convnext_tiny', 10, drop_path_rate=0.5, layer_scale=1.0, **UNIFORM)
  forward = nnx.jit(lambda m, x: m(x))  # One compilation per mode, not one per operation.
  x = jax.random.normal(jax.random.key(0), (BATCH, SIZE, SIZE, 3))
  model.train()
  first, second = forward(model, x), forward(model, x)  # The RNG stream advances between calls.
  assert not np.allclose(first, second, atol=1e-5)
  model.eval()
  np.testing.assert_array_equal(forward(model, x), forward(model, x))


def test_default_has_no_stochastic_depth_and_no_rng_state():
  """drop_path_rate=0.0 (the default): train mode computes what eval mode does."""
  model = create_model('convnext_tiny', 10, **UNIFORM)
  assert not jax.tree.leaves(nnx.state(model, nnx.RngState))
  assert all(block.stochastic_depth.rate == 0.0 for block in model.features.layers[7])


def test_stochastic_depth_leaves_the_initialisation_unchanged():
  plain = create_model('convnext_tiny', 10, **UNIFORM)
  dropping = create_model('convnext_tiny', 10, drop_path_rate=0.3, **UNIFORM)
  for a, b in zip(jax.tree.leaves(nnx.state(plain, nnx.Param)),
                  jax.tree.leaves(nnx.state(dropping, nnx.Param))):
    np.testing.assert_array_equal(a, b)


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_parameters():
  model = nnx.eval_shape(lambda: create_model('convnext_tiny', 10, dtype='bfloat16', **SMALL))
  logits = nnx.eval_shape(lambda m, x: m(x), model, jnp.ones((BATCH, SIZE, SIZE, 3)))
  assert logits.dtype == jnp.bfloat16
  assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype('float32')}


def test_a_jitted_train_step_with_stochastic_depth_gives_a_finite_loss(config):
  """The dropout RNG state is a non-Param variable: it rides in `model_state`."""
  model = create_model('convnext_tiny', 10, drop_path_rate=0.2, **UNIFORM)
  state, train_fn, _ = jitted.steps_for(model, config.optimizer)
  batch = jitted.random_batch(BATCH, SIZE)
  assert _dropout_counts(state) and set(_dropout_counts(state)) == {0}
  for _ in range(2):
    state, metrics = train_fn(state, batch)
  assert int(state.step) == 2
  assert set(_dropout_counts(state)) == {2}  # A fresh mask each step.
  assert np.isfinite(metrics.compute()['loss'])


def _dropout_counts(state):
  return [int(v.get_value()) for path, v in nnx.to_flat_state(state.model_state)
          if 'stochastic_depth' in path and path[-1] == 'count']
