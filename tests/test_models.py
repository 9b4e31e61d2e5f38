"""The ResNet family: torchvision's parameter counts, shapes, dtypes and BatchNorm modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcls.models import create_model, list_models


def num_params(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# torchvision.models.resnetNN(num_classes=1000) parameter counts (torchvision's docs), and
# He et al.'s CIFAR ResNet-20 with 1x1 projection shortcuts (0.27M).
@pytest.mark.parametrize('name,num_classes,expected', [
    ('resnet18', 1000, 11_689_512),
    ('resnet34', 1000, 21_797_672),
    ('resnet50', 1000, 25_557_032),
    ('resnet101', 1000, 44_549_160),
    ('cifar_resnet20', 10, 272_474),
])
def test_parameter_counts_match_the_references(name, num_classes, expected):
  model = nnx.eval_shape(lambda: create_model(name, num_classes))
  assert num_params(model) == expected


def test_registry_lists_the_families():
  assert {'resnet18', 'resnet50', 'resnet152', 'cifar_resnet20', 'cifar_resnet56'} <= set(
      list_models())


def test_unknown_model_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown model 'resnet19'"):
    create_model('resnet19', 10)


def test_imagenet_resnet_downsamples_by_32():
  model = create_model('resnet18', 7, width=8)
  x = jnp.ones((2, 64, 64, 3))
  assert model(x).shape == (2, 7)
  assert model.features(x).shape == (2, 8 * 8)


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_parameters():
  model = create_model('cifar_resnet20', 10, width=4, dtype='bfloat16')
  assert model(jnp.ones((2, 16, 16, 3))).dtype == jnp.bfloat16
  assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype('float32')}


def test_eval_mode_uses_running_statistics():
  """In eval mode an example's logits do not depend on the rest of the batch."""
  model = create_model('cifar_resnet20', 10, width=4)
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  model.train()
  train_logits = model(x)
  assert not np.allclose(model(x[:4])[0], train_logits[0], atol=1e-4)
  model.eval()
  np.testing.assert_allclose(model(x[:4])[0], model(x)[0], atol=1e-5)


def test_train_mode_updates_running_statistics():
  model = create_model('cifar_resnet20', 10, width=4)
  before = np.asarray(model.bn1.mean[...])
  model.train()
  model(jax.random.normal(jax.random.key(0), (8, 16, 16, 3)) + 3.0)
  assert not np.allclose(before, model.bn1.mean[...])
