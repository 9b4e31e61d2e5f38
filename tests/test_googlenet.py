"""GoogLeNet: torchvision's parameter counts, keys and logits, its auxiliary heads, ceil-mode pools.

On a small CPU both ways of running a fresh GoogLeNet are slow: eagerly, its
random initialisers and ~60 convolutions compile one operation at a time (a
minute to build one at width 4), and one jitted forward compiles for 6-15 s
at XLA's default optimisation level. So the models here are shapes from
`nnx.eval_shape` whose values all come from a torch reference (cached per
configuration; every test loads the checkpoint it compares against), and
each forward is one program compiled at XLA's lowest optimisation level
(`_run`: 1-5 s), with XLA's own convolutions: the model's numerics are under
test here, not the CPU lowering (tests/test_conv_lowering.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxcls.models import create_model, list_models
from jaxcls.models.googlenet import max_pool  # Registers 'googlenet', whether models/ does or not.
from jaxcls.pretrained import load_state_dict
from jaxcls.pretrained.convert import CheckpointMismatchError
from jaxcls.training.finetune import freeze_modules, param_labels

import parity
import torch_googlenet

WIDTH, SIZE, ODD_SIZE, BATCH = 16, 64, 100, 4
# 64 px: the ceil-mode pools give 32 -> 16 -> 8 -> 4 -> 2 (floor mode: 15 -> 7 -> 3 -> 1).
# 100 px: 50 -> 25 (floor: 24) ... and the auxiliary heads pool a 6x6 map to 4x4
# with overlapping windows.
NO_DROPOUT = dict(dropout_rate=0.0, aux_dropout_rate=0.0)  # No RNG state to fill.


def num_params(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _abstract(num_classes=10, width=WIDTH, **kwargs):
  return nnx.eval_shape(lambda: create_model('googlenet', num_classes, width=width,
                                             conv_lowering='xla', **kwargs))


@functools.cache
def _small(num_classes=10, aux_logits=True, transform_input=False):
  """A small model without dropout; callers load every weight they compare."""
  return _abstract(num_classes, aux_logits=aux_logits, transform_input=transform_input,
                   **NO_DROPOUT)


@functools.cache
def _with_default_rates():
  """Width 32, the auxiliary heads, torchvision's dropout rates: structure only."""
  return _abstract(10, width=32, aux_logits=True)


@functools.cache
def _full_size(aux_logits):
  return nnx.split(_abstract(1000, width=0, aux_logits=aux_logits))


def _reference(num_classes=10, aux_logits=True, transform_input=False, seed=0):
  torch.manual_seed(seed)
  reference = torch_googlenet.GoogLeNet(num_classes, aux_logits=aux_logits,
                                        transform_input=transform_input, dropout=0.0,
                                        dropout_aux=0.0, width=WIDTH)
  torch_googlenet.randomize(reference, seed)
  return reference


def _run(model, images):
  """`model.logits_and_aux(images)` as one program compiled at XLA's lowest optimisation level."""
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, x: nnx.merge(graphdef, state).logits_and_aux(x),
                    compiler_options={'xla_backend_optimization_level': 0})
  logits, aux = forward(state, images)
  return np.asarray(logits), tuple(np.asarray(a) for a in aux)


def _torch_forward(reference, images):
  with torch.no_grad():
    out = reference(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
  return tuple(t.numpy() for t in out) if isinstance(out, tuple) else out.numpy()


def assert_close(actual, expected):
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_registered():
  assert 'googlenet' in list_models()


@pytest.mark.parametrize('aux_logits,expected', [(False, 6_624_904), (True, 13_004_888)])
def test_parameter_count_matches_torchvision(aux_logits, expected):
  with torch.device('meta'):
    reference = torch_googlenet.GoogLeNet(1000, aux_logits=aux_logits)
  assert sum(p.numel() for p in reference.parameters()) == expected
  assert num_params(nnx.merge(*_full_size(aux_logits))) == expected


@pytest.mark.parametrize('aux_logits', [False, True])
def test_torchvision_checkpoint_loads_strictly_at_full_size(aux_logits):
  """torchvision's file has the auxiliary heads (its pretrained model drops them after loading):
  a model without them drops those keys, a model with them reads them."""
  with torch.device('meta'):
    reference = torch_googlenet.GoogLeNet(1000, aux_logits=True)
  state = {k: np.zeros(v.shape, np.float32) for k, v in reference.state_dict().items()}
  # torchvision's branch3 is 1x1 -> 3x3, not the paper's 5x5; its weights say so.
  assert state['inception4a.branch3.1.conv.weight'].shape == (48, 16, 3, 3)
  assert 'inception3a.branch4.1.conv.weight' in state  # The max-pool holds index 0.
  assert state['aux1.fc1.weight'].shape == (1024, 2048)
  model = nnx.merge(*_full_size(aux_logits))
  assert load_state_dict(model, state) == 'torchvision'
  assert model.inception4a.branch3.layers[1].conv.kernel.shape == (3, 3, 16, 48)
  assert hasattr(model, 'aux1') == aux_logits


def test_logits_match_torchvision_without_aux_heads():
  """Eval mode, random weights and BatchNorm statistics; an aux-on checkpoint, its aux dropped."""
  reference = _reference(aux_logits=True)
  model = _small(aux_logits=False)
  assert load_state_dict(model, parity.state_dict_numpy(reference)) == 'torchvision'
  model.eval()
  reference.eval()
  images = parity.random_images(BATCH, SIZE)
  logits, aux = _run(model, images)
  assert aux == ()
  assert logits.shape == (BATCH, 10)
  assert_close(logits, _torch_forward(reference, images))


def test_logits_match_torchvision_with_aux_heads_and_transform_input_at_an_odd_size():
  """At 100 px the ceil-mode pools keep a partial last window (50 -> 25, not 24)."""
  reference = _reference(aux_logits=True, transform_input=True, seed=1)
  model = _small(aux_logits=True, transform_input=True)
  load_state_dict(model, parity.state_dict_numpy(reference))
  model.eval()
  reference.eval()
  images = parity.random_images(BATCH, ODD_SIZE, seed=1)
  logits, aux = _run(model, images)
  assert aux == ()  # Eval mode never computes the auxiliary heads.
  assert_close(logits, _torch_forward(reference, images))


def test_train_mode_aux_logits_match_torchvision():
  """Train mode (BatchNorm on batch statistics, dropout off): logits, aux1's and aux2's."""
  reference = _reference(aux_logits=True, seed=2)
  model = _small(aux_logits=True)
  load_state_dict(model, parity.state_dict_numpy(reference))
  model.train()
  reference.train()
  images = parity.random_images(BATCH, SIZE, seed=2)
  logits, aux = _run(model, images)
  expected_logits, expected_aux2, expected_aux1 = _torch_forward(reference, images)
  assert len(aux) == 2 and all(a.shape == (BATCH, 10) for a in aux)
  assert_close(logits, expected_logits)
  assert_close(aux[0], expected_aux1)
  assert_close(aux[1], expected_aux2)


def test_aux_logits_only_while_the_aux_heads_train():
  """Eval mode, and train mode with the `aux` group frozen by fine-tuning, compute no aux heads."""
  model = _small(aux_logits=True)
  images = jnp.zeros((2, SIZE, SIZE, 3))
  aux_of = lambda: nnx.eval_shape(lambda m, x: m.logits_and_aux(x), model, images)[1]  # noqa: E731
  model.train()
  assert [a.shape for a in aux_of()] == [(2, 10), (2, 10)]
  model.eval()
  assert aux_of() == ()
  model.train()
  freeze_modules(model, ['aux'])
  assert aux_of() == ()
  without = _small(aux_logits=False)
  without.train()
  assert nnx.eval_shape(lambda m, x: m.logits_and_aux(x), without, images)[1] == ()
  assert not hasattr(without, 'aux1') and not hasattr(without, 'aux2')


def test_new_classes_leave_fc_and_both_aux_fc2_fresh():
  model = _small(aux_logits=True)
  load_state_dict(model, parity.state_dict_numpy(_reference(seed=3)))
  heads = lambda: [np.asarray(m.kernel[...]) for m in (model.fc, model.aux1.fc2, model.aux2.fc2)]  # noqa: E731
  before = heads()
  other = _reference(num_classes=7, seed=4)
  for keep_head in (False, None):  # None: kept only where the shapes fit, here none.
    load_state_dict(model, parity.state_dict_numpy(other), keep_head=keep_head)
    for kept, fresh in zip(heads(), before):
      np.testing.assert_array_equal(kept, fresh)
  np.testing.assert_array_equal(model.aux1.fc1.kernel[...], other.aux1.fc1.weight.detach().numpy().T)
  np.testing.assert_array_equal(model.inception5b.branch1.bn.mean[...],
                                other.inception5b.branch1.bn.running_mean.numpy())


def test_a_checkpoint_without_aux_heads_does_not_fill_a_model_with_them():
  model = _small(aux_logits=True)
  with pytest.raises(CheckpointMismatchError, match='aux1'):
    load_state_dict(model, parity.state_dict_numpy(_reference(aux_logits=False)))


def test_interface():
  model = _small(aux_logits=True)
  assert model.head_name == 'fc'
  assert model.num_features == 1024 * WIDTH // 64
  assert model.class_layers == ('fc', 'aux1.fc2', 'aux2.fc2')
  assert model.tied_groups == {'aux': 'inception4'}
  assert [g for g, _ in model.group_patterns] == [
      'stem', 'inception3', 'inception4', 'aux', 'inception5', 'head']
  labels = jax.tree.leaves(param_labels(model, nnx.state(model, nnx.Param)))
  assert set(labels) == {g for g, _ in model.group_patterns}  # Every parameter has a group.
  images = jnp.zeros((2, SIZE, SIZE, 3))
  features = nnx.eval_shape(lambda m, x: m.features(x), model, images)
  activations = nnx.eval_shape(lambda m, x: m.last_stage(x)[0], model, images)
  assert features.shape == (2, model.num_features)
  assert activations.shape == (2, 2, 2, model.num_features)

  plain = _small(aux_logits=False)
  assert plain.class_layers == ('fc',) and plain.tied_groups == {}
  assert 'aux' not in dict(plain.group_patterns)
  rename = plain.checkpoint_layouts['torchvision']
  assert rename('aux2.fc2.bias') is None and rename('fc.bias') == 'fc.bias'


def test_width_scales_every_channel():
  model = _with_default_rates()
  assert model.conv1.conv.kernel.shape == (7, 7, 3, 32)
  assert model.num_features == 512 and model.fc.kernel.shape == (512, 10)
  assert model.aux1.conv.conv.kernel.shape == (1, 1, 256, 64)  # inception4a: 512 -> 256.
  assert model.aux2.fc1.kernel.shape == (64 * 16, 512)


def test_dropout_rates_and_rng_state():
  """Default rates: torchvision's 0.2 and 0.7, with a dropout stream derived from the params
  key; rates of zero: no RNG state at all."""
  model = _with_default_rates()
  assert model.dropout.rate == 0.2 and model.aux1.dropout.rate == model.aux2.dropout.rate == 0.7
  assert jax.tree.leaves(nnx.state(model, nnx.RngState))
  assert not jax.tree.leaves(nnx.state(_small(aux_logits=True), nnx.RngState))


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_parameters():
  model = _abstract(10, dtype='bfloat16', **NO_DROPOUT)
  logits = nnx.eval_shape(lambda m, x: m(x), model, jnp.ones((2, SIZE, SIZE, 3)))
  assert logits.dtype == jnp.bfloat16
  assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype('float32')}


@pytest.mark.parametrize('kernel,stride,padding', [(3, 2, 0), (2, 2, 0), (3, 1, 1), (3, 2, 1),
                                                    (4, 3, 1)])
def test_ceil_mode_max_pool_matches_torch(kernel, stride, padding):
  """PyTorch's output size (a last window starting in the right padding is dropped) and values."""
  for size in range(max(kernel - 2 * padding, 1), 12):
    expected_shape = torch.nn.functional.max_pool2d(
        torch.zeros(1, 1, size, size + 1), kernel, stride, padding, ceil_mode=True).shape[2:]
    shape = jax.eval_shape(lambda x: max_pool(x, kernel, stride, padding, ceil_mode=True),
                           jnp.zeros((1, size, size + 1, 1))).shape[1:3]
    assert shape == tuple(expected_shape), size
  images = parity.random_images(2, 9)
  expected = torch.nn.functional.max_pool2d(torch.from_numpy(images).permute(0, 3, 1, 2),
                                            kernel, stride, padding, ceil_mode=True)
  np.testing.assert_array_equal(max_pool(images, kernel, stride, padding, ceil_mode=True),
                                expected.permute(0, 2, 3, 1).numpy())
