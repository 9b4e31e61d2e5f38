"""jaxcls's BatchNorm against nnx.BatchNorm: the same values, running averages and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcls.models.batchnorm import BatchNorm


def _pair(channels, dtype=None, **kwargs):
  ours = BatchNorm(channels, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=nnx.Rngs(0), **kwargs)
  theirs = nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=nnx.Rngs(0),
                         **kwargs)
  rng = np.random.default_rng(1)
  for bn in (ours, theirs):  # Non-trivial affine parameters and running averages.
    bn.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, channels), jnp.float32)
    bn.bias[...] = jnp.asarray(rng.normal(size=channels), jnp.float32)
    rng = np.random.default_rng(1)
  return ours, theirs


def _loss_and_grads(bn, x, weights):
  def loss(bn, x):
    return jnp.sum(jax.nn.silu(bn(x, use_running_average=False)).astype(jnp.float32) * weights)
  return nnx.value_and_grad(loss, argnums=(0, 1))(bn, x)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('shape', [(4, 6, 5, 8), (3, 8)])
def test_training_mode_matches_nnx_batchnorm(dtype, shape):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(2.0, 3.0, shape), dtype)
  weights = jnp.asarray(rng.normal(size=shape), jnp.float32)
  ours, theirs = _pair(shape[-1], dtype=dtype)
  (loss, (g_ours, gx_ours)) = _loss_and_grads(ours, x, weights)
  (ref, (g_theirs, gx_theirs)) = _loss_and_grads(theirs, x, weights)
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=3e-2, atol=3e-2)
  assert ours(x, use_running_average=False).dtype == theirs(x, use_running_average=False).dtype
  np.testing.assert_allclose(float(loss), float(ref), **tol)
  np.testing.assert_allclose(np.asarray(gx_ours, np.float32), np.asarray(gx_theirs, np.float32),
                             **tol)
  for name in ('scale', 'bias'):
    np.testing.assert_allclose(np.asarray(getattr(g_ours, name)[...], np.float32),
                               np.asarray(getattr(g_theirs, name)[...], np.float32), **tol)
  for name in ('mean', 'var'):  # Updated by the calls above, once per call.
    np.testing.assert_allclose(np.asarray(getattr(ours, name)[...]),
                               np.asarray(getattr(theirs, name)[...]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(getattr(ours, name)[...]), 0.0 if name == 'mean' else 1.0)


def test_a_constant_channel_gets_a_finite_gradient():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3, 3, 4)), jnp.float32)
  x = x.at[..., 1].set(7.0)
  ours, theirs = _pair(4)
  weights = jnp.ones(x.shape)
  _, (_, gx_ours) = _loss_and_grads(ours, x, weights)
  _, (_, gx_theirs) = _loss_and_grads(theirs, x, weights)
  assert np.isfinite(np.asarray(gx_ours)).all()
  np.testing.assert_allclose(np.asarray(gx_ours), np.asarray(gx_theirs), rtol=1e-4, atol=1e-4)


def test_eval_mode_and_masks_are_nnx_batchnorms():
  x = jnp.asarray(np.random.default_rng(4).normal(size=(5, 6)), jnp.float32)
  mask = jnp.asarray(np.random.default_rng(5).random((5, 6)) > 0.3)
  ours, theirs = _pair(6)
  np.testing.assert_array_equal(ours(x, use_running_average=True),
                                theirs(x, use_running_average=True))
  np.testing.assert_array_equal(ours(x, use_running_average=False, mask=mask),
                                theirs(x, use_running_average=False, mask=mask))
