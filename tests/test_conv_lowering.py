"""Convolutions on tiny maps lowered to a patch matmul: the same function, chosen where it pays."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from jaxcls.config import ConfigError, validate
from jaxcls.models import create_model
from jaxcls.models import conv

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _operands(side, cin, cout, kernel, dtype=jnp.float32, width=None):
  """A batch of 3 maps side x width (default: one column more, so rows and columns differ)."""
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (3, side, width or side + 1, cin), jnp.float32).astype(dtype)
  w = (jax.random.normal(kw, (kernel, kernel, cin, cout), jnp.float32) * 0.2).astype(dtype)
  return x, w


def _xla(x, w, stride, padding):
  return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=NHWC)


def _auto(x, w, stride, padding):
  return conv.auto_conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=NHWC)


@pytest.mark.parametrize('side,kernel,stride,padding', [
    (2, 3, 1, ((1, 1), (1, 1))),   # ResNet-18's last stage at 32x32 (one column more here).
    (4, 3, 2, ((1, 1), (1, 1))),   # Its strided entry.
    (1, 3, 1, ((1, 1), (1, 1))),   # Every tap but the centre on padding.
    (3, 3, 2, 'SAME'),             # TensorFlow's asymmetric SAME (EfficientNet).
    (5, 5, 2, ((0, 2), (1, 0))),
    (2, 2, 2, 'VALID'),            # ConvNeXt's downsampling.
    (4, 1, 2, 'VALID'),            # A strided pointwise shortcut.
])
def test_patch_matmul_is_the_convolution_and_its_gradients(side, kernel, stride, padding):
  x, w = _operands(side, 16, 24, kernel)
  pads = conv._explicit_padding(padding, x.shape[1:3], w.shape[:2], (stride, stride))
  patched = lambda x, w: conv.conv_as_patch_matmul(x, w, (stride, stride), pads)  # noqa: E731
  np.testing.assert_allclose(patched(x, w), _xla(x, w, stride, padding), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
  grads = jax.grad(loss(patched), argnums=(0, 1))(x, w)
  expected = jax.grad(loss(lambda x, w: _xla(x, w, stride, padding)), argnums=(0, 1))(x, w)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bfloat16_patch_matmul_stays_in_bfloat16_and_close():
  x, w = _operands(2, 32, 32, 3, dtype=jnp.bfloat16)
  pads = ((1, 1), (1, 1))
  got = conv.conv_as_patch_matmul(x, w, (1, 1), pads)
  assert got.dtype == jnp.bfloat16
  want = _xla(x.astype(jnp.float32), w.astype(jnp.float32), 1, pads)
  np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=0.05, atol=0.05)


def _lowers_to_xla_convolution(fn, *args) -> bool:
  return 'conv_general_dilated' in str(jax.make_jaxpr(fn)(*args))


@pytest.mark.parametrize('side,kernel,stride,channels,patched', [
    (2, 3, 1, 8, True),     # ResNet-18's last stage at 32x32: a 2x2 output.
    (4, 3, 2, 8, True),     # Its strided entry: a 2x2 output too.
    (1, 3, 1, 8, True),
    (3, 3, 1, 64, False),   # A 3x3 output, stride 1: XLA's convolution.
    (8, 3, 1, 64, False),
    (8, 3, 2, 16, True),    # Strided, 16 channels or more: the gradient is XLA:CPU's weak spot.
    (8, 3, 2, 8, False),
    (16, 7, 2, 3, False),   # An RGB stem.
    (8, 1, 1, 8, True),     # Pointwise: a matmul.
    (8, 1, 2, 8, True),
])
def test_auto_patches_where_xla_cpu_is_slow(side, kernel, stride, channels, patched):
  x, w = _operands(side, channels, 8, kernel, width=side)
  pad = kernel // 2
  uses_xla = _lowers_to_xla_convolution(
      lambda x, w: _auto(x, w, stride, ((pad, pad), (pad, pad))), x, w)
  assert uses_xla == (not patched)


@pytest.mark.parametrize('side,kernel,stride,padding', [
    (8, 7, 1, ((3, 3), (3, 3))),   # ConvNeXt's block.
    (9, 3, 2, 'SAME'),             # EfficientNet's strided 3x3, TensorFlow's padding.
    (6, 5, 2, ((2, 2), (2, 2))),   # MobileNet-style 5x5/2, torchvision's padding.
    (8, 3, 2, ((1, 1), (1, 1))),   # The last input row falls outside every window.
    (7, 5, 2, ((2, 2), (2, 2))),   # Odd input, strided.
    (5, 3, 1, ((0, 2), (1, 0))),   # Lopsided padding.
])
def test_depthwise_shifted_sum_is_the_convolution_and_its_gradients(side, kernel, stride,
                                                                    padding):
  x, _ = _operands(side, 12, 12, kernel)
  w = jax.random.normal(jax.random.key(3), (kernel, kernel, 1, 12)) * 0.2
  depthwise = lambda f: lambda x, w: f(  # noqa: E731
      x, w, (stride, stride), padding, dimension_numbers=NHWC, feature_group_count=12)
  auto, xla = depthwise(conv.auto_conv_general_dilated), depthwise(lax.conv_general_dilated)
  assert not _lowers_to_xla_convolution(auto, x, w)
  np.testing.assert_allclose(auto(x, w), xla(x, w), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
  for got, want in zip(jax.grad(loss(auto), argnums=(0, 1))(x, w),
                       jax.grad(loss(xla), argnums=(0, 1))(x, w)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bfloat16_depthwise_accumulates_in_float32():
  x, _ = _operands(8, 16, 16, 7, dtype=jnp.bfloat16)
  w = (jax.random.normal(jax.random.key(3), (7, 7, 1, 16)) * 0.2).astype(jnp.bfloat16)
  pads = ((3, 3), (3, 3))
  got = conv.depthwise_as_shifted_sum(x, w, (1, 1), pads)
  assert got.dtype == jnp.bfloat16
  want = lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32), (1, 1), pads,
                                  dimension_numbers=NHWC, feature_group_count=16)
  # One bfloat16 rounding of the result (8 bits of mantissa) from the float32 sum, as XLA's
  # own bfloat16 convolution gives; a bfloat16 running sum of the 49 taps misses this on
  # about half of the outputs.
  error = jnp.abs(got.astype(jnp.float32) - want)
  assert bool(jnp.all(error <= 2**-8 * jnp.abs(want) + 1e-3)), float(error.max())


def test_auto_leaves_other_grouped_convolutions_to_xla():
  x, _ = _operands(4, 8, 8, 3)
  two_groups = jnp.ones((3, 3, 4, 8))
  assert _lowers_to_xla_convolution(lambda x: conv.auto_conv_general_dilated(
      x, two_groups, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC, feature_group_count=2), x)
  multiplier = jnp.ones((3, 3, 1, 16))  # Depthwise with two outputs per channel.
  assert _lowers_to_xla_convolution(lambda x: conv.auto_conv_general_dilated(
      x, multiplier, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC, feature_group_count=8), x)


def test_set_conv_lowering_reaches_every_convolution_and_keeps_the_function():
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  outputs = {}
  for lowering in ('xla', 'auto'):
    model = create_model('resnet18', 5, width=8, conv_lowering=lowering)
    convs = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Conv)]
    expected = conv.auto_conv_general_dilated if lowering == 'auto' else lax.conv_general_dilated
    assert len(convs) == 20 and all(c.conv_general_dilated is expected for c in convs)
    model.eval()
    outputs[lowering] = nnx.jit(lambda m, x: m(x))(model, x)
  # The two lowerings hold the same parameters (same seed) and compute the same network.
  np.testing.assert_allclose(outputs['auto'], outputs['xla'], rtol=1e-4, atol=1e-5)


def test_unknown_lowering_is_an_error_naming_it(config):
  with pytest.raises(ValueError, match="'im2col'"):
    create_model('cifar_resnet20', 10, width=4, conv_lowering='im2col')
  config.model.conv_lowering = 'im2col'
  with pytest.raises(ConfigError, match=r"config.model.conv_lowering='im2col'"):
    validate(config)


def _ynn_convolutions(compiled_text: str) -> int:
  """How many of XLA:CPU's YNNPACK fusions in an optimised HLO module hold a convolution."""
  bodies = dict(re.findall(r'^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}', compiled_text, re.S | re.M))
  called = re.findall(r'calls=%?([\w.\-]+)[^\n]*__ynn_fusion', compiled_text)
  return sum('convolution(' in bodies.get(name, '') for name in called)


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU compiler options')
def test_the_steps_keep_convolution_gradients_out_of_ynnpack():
  # ResNet-18's first stage at 224px: large enough for XLA to hand it to YNNPACK by default.
  x, w = jnp.zeros((16, 56, 56, 64)), jnp.zeros((3, 3, 64, 64))
  grad = jax.grad(lambda x, w: jnp.sum(lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=NHWC) ** 2), argnums=(0, 1))
  default = jax.jit(grad).lower(x, w).compile().as_text()
  ours = jax.jit(grad, compiler_options=conv.compiler_options()).lower(x, w).compile().as_text()
  assert conv.compiler_options() == conv.CPU_COMPILER_OPTIONS
  assert _ynn_convolutions(default) > 0  # XLA's default: YNNPACK's slower weight gradient.
  assert _ynn_convolutions(ours) == 0
