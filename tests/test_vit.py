"""Vision Transformers: timm's keys and sizes, torchvision's layout, position embeddings resampled.

As in test_convnext.py, models come from `nnx.eval_shape` and take every
value from a torch reference, so no initialiser compiles. The two full-size
forwards (ViT-S/16 and ViT-B/16 at 224) each serve both layouts: the torch
references in timm's and torchvision's layouts hold the same random network,
the model loads each checkpoint to the same parameters, and its logits match
both references' own forwards.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from jaxcls.models import create_model
from jaxcls.models import vit  # Registers the ViTs (until jaxcls.models imports it).
from jaxcls.pretrained import load_state_dict
from jaxcls.pretrained.convert import CheckpointMismatchError
from jaxcls.training.finetune import param_labels

import parity
import torch_vit

SMALL = dict(embed_dim=64, depth=2, num_heads=4)  # Patch 16: 32x32 images are a 2x2 grid.
SIZE, BATCH = 32, 2


def num_params(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _assert_close(actual, reference):
  reference = np.asarray(reference)
  np.testing.assert_allclose(np.asarray(actual), reference, rtol=1e-4,
                             atol=1e-4 * np.abs(reference).max())


@functools.cache
def _split(name, num_classes, kwargs):
  return nnx.split(nnx.eval_shape(lambda: create_model(name, num_classes, **dict(kwargs))))


def _abstract(name, num_classes=1000, **kwargs):
  """A model of shapes, traced once per configuration; each call is a fresh one to load into."""
  return nnx.merge(*_split(name, num_classes, tuple(sorted(kwargs.items()))))


@nnx.jit
def _forward(model, images):
  """One compilation per model shape, rather than one per operation in eager mode."""
  return model(images)


def _logits(model, images):
  model.eval()
  return np.asarray(_forward(model, images))


def _timm_reference(num_classes=10, seed=0, **config):
  config = {**dict(img_size=SIZE, **SMALL), **config}
  reference = torch_vit.TimmViT(num_classes=num_classes, **config)
  torch_vit.randomize(reference, seed)
  return reference


def _params(model):
  return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@functools.cache
def _small_model():
  model = _abstract('vit_small_patch16', 10, img_size=SIZE, **SMALL)
  load_state_dict(model, parity.state_dict_numpy(_timm_reference()))
  return model


def test_registry_and_sizes():
  for name, (dim, depth, heads) in torch_vit.SIZES.items():
    model = _abstract(name)
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (dim, depth,
                                                                                     heads)
    assert model.pos_embed.shape == (1, 14 * 14 + 1, dim)
  model = _abstract('vit_small_patch16', 10, width=128, depth=3, img_size=64)
  assert (model.num_features, model.blocks[0].attn.num_heads, len(model.blocks)) == (128, 2, 3)
  assert model.pos_embed.shape == (1, 4 * 4 + 1, 128)


# timm's vit_small_patch16_224 and vit_base_patch16_224 (1000 classes).
@pytest.mark.parametrize('name,expected', [
    ('vit_small_patch16', 22_050_664),
    ('vit_base_patch16', 86_567_656),
])
def test_parameter_counts_match_timm(name, expected):
  assert num_params(_abstract(name)) == expected
  with torch.device('meta'):
    timm_count = sum(p.numel() for p in torch_vit.timm_vit(name).parameters())
    torchvision_count = sum(p.numel() for p in torch_vit.torchvision_vit(name).parameters())
  assert timm_count == torchvision_count == expected


@pytest.mark.parametrize('name', ['vit_small_patch16', 'vit_base_patch16'])
def test_full_size_logits_match_timm_and_torchvision(name):
  """One forward at 224 checks both layouts: both checkpoints load the same parameters."""
  with torch.device('meta'):  # Skips torch's initialisers: every value is set below.
    timm_reference = torch_vit.timm_vit(name, num_classes=1000)
    torchvision_reference = torch_vit.torchvision_vit(name, num_classes=1000)
  timm_reference.to_empty(device='cpu')
  torch_vit.randomize(timm_reference, seed=3)
  torchvision_reference.load_state_dict(
      torch_vit.timm_state_to_torchvision(timm_reference.state_dict()), assign=True)
  images = parity.random_images(1, 224, seed=1)
  timm_logits = parity.torch_logits(timm_reference, images)
  torchvision_logits = parity.torch_logits(torchvision_reference, images)

  model = _abstract(name)
  assert load_state_dict(model, parity.state_dict_numpy(torchvision_reference)) == 'torchvision'
  from_torchvision = _params(model)
  assert load_state_dict(model, parity.state_dict_numpy(timm_reference)) == 'timm'
  for key, value in _params(model).items():
    np.testing.assert_array_equal(value, from_torchvision[key], err_msg=str(key))
  logits = _logits(model, images)
  _assert_close(logits, timm_logits)
  _assert_close(logits, torchvision_logits)


def test_small_logits_match_timm():
  reference = _timm_reference(seed=1)
  model = _small_model()
  assert load_state_dict(model, parity.state_dict_numpy(reference)) == 'timm'
  images = parity.random_images(BATCH, SIZE)
  _assert_close(_logits(model, images), parity.torch_logits(reference, images))


def test_small_logits_match_torchvision():
  """An independently random torchvision network, its nn.MultiheadAttention and all."""
  reference = torch_vit.TorchvisionViT(image_size=SIZE, hidden_dim=64, num_layers=2, num_heads=4,
                                       mlp_dim=256, num_classes=10)
  torch_vit.randomize(reference, seed=2)
  model = _small_model()
  assert load_state_dict(model, parity.state_dict_numpy(reference)) == 'torchvision'
  images = parity.random_images(BATCH, SIZE, seed=3)
  _assert_close(_logits(model, images), parity.torch_logits(reference, images))


@pytest.mark.parametrize('img_size', [64, 48])  # 4x4 -> 6x6 (up) and 4x4 -> 3x3 (down).
def test_checkpoint_at_another_size_resamples_position_embeddings_as_timm(img_size):
  """timm's reference at 64, its pos_embed F.interpolate'd as timm loads it at `img_size`."""
  source = _timm_reference(seed=4, img_size=64)
  reference = _timm_reference(img_size=img_size)
  state = source.state_dict()
  grid = img_size // 16
  state['pos_embed'] = torch_vit.resample_abs_pos_embed(state['pos_embed'], (grid, grid))
  reference.load_state_dict(state)

  model = _abstract('vit_small_patch16', 10, img_size=img_size, **SMALL)
  load_state_dict(model, parity.state_dict_numpy(source))
  _assert_close(model.pos_embed[...], state['pos_embed'].detach().numpy())
  images = parity.random_images(BATCH, img_size, seed=5)
  _assert_close(_logits(model, images), parity.torch_logits(reference, images))


@pytest.mark.parametrize('antialias', [True, False])
@pytest.mark.parametrize('new', [24, 8])  # Up and down from 14, as 224 -> 384 and 224 -> 128.
def test_resampling_is_torch_bicubic(new, antialias):
  posemb = np.random.default_rng(0).standard_normal((1, 1 + 14 * 14, 5)).astype(np.float32)
  ours = vit.resample_abs_pos_embed(posemb, (new, new), antialias=antialias)
  grid = torch.from_numpy(posemb[:, 1:]).reshape(1, 14, 14, 5).permute(0, 3, 1, 2)
  expected = F.interpolate(grid, size=(new, new), mode='bicubic', antialias=antialias,
                           align_corners=False).permute(0, 2, 3, 1).reshape(1, -1, 5).numpy()
  assert ours.dtype == np.float32 and ours.shape == (1, 1 + new * new, 5)
  np.testing.assert_array_equal(ours[:, :1], posemb[:, :1])  # The class token is kept.
  np.testing.assert_allclose(ours[:, 1:], expected, rtol=0, atol=1e-5)


def test_adapt_checkpoint_tensor_touches_only_position_embeddings():
  model = _small_model()  # 2x2 grid.
  posemb = np.random.default_rng(1).standard_normal((1, 1 + 16, 64)).astype(np.float32)
  assert model.adapt_checkpoint_tensor('pos_embed', posemb, (1, 5, 64)).shape == (1, 5, 64)
  same = model.adapt_checkpoint_tensor('pos_embed', posemb[:, :5], (1, 5, 64))
  assert same is not None and same.shape == (1, 5, 64)
  other = np.zeros((1, 17, 64), np.float32)
  assert model.adapt_checkpoint_tensor('blocks.0.norm1.weight', other, (64,)) is other
  assert model.adapt_checkpoint_tensor('pos_embed', other[..., :32], (1, 5, 64)).shape == (
      1, 17, 32)  # Another width: left for the converter to report.


def test_position_embeddings_of_no_square_grid_are_refused():
  state = parity.state_dict_numpy(_timm_reference())
  state['pos_embed'] = np.zeros((1, 1 + 6, 64), np.float32)
  with pytest.raises(CheckpointMismatchError, match=r'pos_embed: checkpoint shape \(1, 7, 64\)'):
    load_state_dict(_abstract('vit_small_patch16', 10, img_size=SIZE, **SMALL), state)


def test_torchvision_keys_rename_and_unknown_keys_are_marked():
  rename = vit.torchvision_to_canonical
  assert rename('encoder.layers.encoder_layer_11.self_attention.in_proj_weight') == (
      'blocks.11.attn.qkv.weight')
  assert rename('encoder.layers.encoder_layer_3.mlp.linear_2.bias') == 'blocks.3.mlp.fc2.bias'
  assert rename('encoder.layers.encoder_layer_3.mlp.3.bias') == 'blocks.3.mlp.fc2.bias'
  assert rename('heads.pre_logits.weight').startswith('<not a torchvision vit key>')
  state = parity.state_dict_numpy(torch_vit.TorchvisionViT(
      image_size=SIZE, hidden_dim=64, num_layers=2, num_heads=4, mlp_dim=256, num_classes=10))
  state['heads.pre_logits.weight'] = np.zeros((64, 64), np.float32)
  with pytest.raises(CheckpointMismatchError, match='heads.pre_logits.weight'):
    load_state_dict(_small_model(), state, layout='torchvision')


def test_last_stage_gives_the_features_exactly():
  model = _small_model()
  model.eval()
  images = jnp.asarray(parity.random_images(BATCH, SIZE, seed=6))


  @nnx.jit
  def split_and_whole(model, images):
    activations, rest = model.last_stage(images)
    # The patch tokens entering the last block do reach the pooled class token.
    grad = jax.grad(lambda a: rest(a).sum())(activations)
    return activations, rest(activations), model.features(images), grad

  activations, from_split, features, grad = split_and_whole(model, images)
  assert activations.shape == (BATCH, 2, 2, 64)
  np.testing.assert_array_equal(from_split, features)
  assert np.all(np.abs(np.asarray(grad)).sum(axis=-1) > 0)


def test_groups_embed_blocks_head():
  model = _small_model()
  assert [name for name, _ in model.group_patterns] == ['embed', 'block1', 'block2', 'head']
  labels = dict(nnx.to_flat_state(param_labels(model, nnx.state(model, nnx.Param))))
  by_group = {}
  for path, label in labels.items():
    by_group.setdefault(label.get_value(), set()).add('/'.join(map(str, path)))
  assert by_group['embed'] == {'patch_embed/proj/kernel', 'patch_embed/proj/bias', 'cls_token',
                               'pos_embed'}
  assert {'norm/scale', 'norm/bias', 'blocks/1/mlp/fc2/kernel'} <= by_group['block2']
  assert by_group['head'] == {'head/kernel', 'head/bias'}
  assert all(p.startswith('blocks/0/') for p in by_group['block1'])


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_parameters():
  model = _abstract('vit_small_patch16', 10, img_size=SIZE, dtype='bfloat16', **SMALL)
  x = jnp.ones((BATCH, SIZE, SIZE, 3))
  logits = nnx.eval_shape(lambda m, x: m(x), model, x)
  features = nnx.eval_shape(lambda m, x: m.features(x), model, x)
  activations = nnx.eval_shape(lambda m, x: m.last_stage(x)[0], model, x)
  assert logits.dtype == features.dtype == activations.dtype == jnp.bfloat16
  assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype('float32')}


def test_a_wrong_input_size_is_a_clear_error():
  model = _small_model()
  with pytest.raises(ValueError, match=r'built for 32x32 inputs.*got 48x48'):
    model(jnp.zeros((1, 48, 48, 3)))
  with pytest.raises(ValueError, match='multiple of patch_size'):
    _abstract('vit_small_patch16', 10, img_size=40, **SMALL)


def test_init_and_dropout_in_train_mode_only():
  """A real (small) initialisation: timm's scales, and head dropout random in train mode only."""
  model = nnx.jit(lambda: create_model('vit_small_patch16', 10, img_size=SIZE, dropout_rate=0.5,
                                       drop_path_rate=0.1, **{**SMALL, 'depth': 1}))()
  assert float(jnp.std(model.pos_embed[...])) == pytest.approx(0.02, rel=0.2)
  assert float(jnp.abs(model.cls_token[...]).max()) < 1e-4
  assert float(jnp.abs(model.head.bias[...]).max()) == 0.0
  assert float(jnp.std(model.blocks[0].attn.qkv.kernel[...])) == pytest.approx(0.02, rel=0.1)
  classify = nnx.jit(lambda m, f: m.classify(f))
  features = jnp.ones((4, 64))
  model.train()
  assert not np.allclose(classify(model, features), classify(model, features))
  model.eval()
  np.testing.assert_array_equal(classify(model, features), classify(model, features))
