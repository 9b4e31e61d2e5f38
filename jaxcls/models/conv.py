"""How the zoo's convolutions are lowered: XLA's convolution, or a matmul over patches.

On CPU, XLA's convolution kernels are far behind PyTorch's oneDNN ones in
four places, while a matmul of the same FLOPs runs at Eigen's GEMM speed:
a 3x3 convolution on a 2x2 or 1x1 map (ResNet-18's last stages at 32x32,
VGG's last block: 10-20x slower, its gradients as badly), the gradients of
strided convolutions (2-3x), pointwise ones, forward and backward (1.5-2x
the matmul), and depthwise ones (ConvNeXt's 7x7, EfficientNet's and
MobileNet's 3x3 and 5x5: 20-100x forward, 4-10x with gradients). There
'auto' writes the convolution as what it is. A dense one is one matmul: the
kernel's taps are cut from the padded input as strided slices and
concatenated along the channels ([N, Ho, Wo, kh*kw*C]), then contracted with
the kernel reshaped to [kh*kw*C, O]; autodiff makes the gradients matmuls
too. A depthwise one is the sum over taps of the shifted input times that
tap's per-channel weight: elementwise work, one fused loop.

Elsewhere XLA's own convolution is faster: a stride-1 3x3 on an 8x8 or larger
map (the patch tensor, kh*kw times the input, costs more memory traffic than
the kernel saves) and the 3-channel stems. On GPU and TPU the vendor libraries
win everywhere, so 'auto' is XLA's convolution there. `benchmarks/bench_convs.py`
times both lowerings per convolution against PyTorch; `python benchmarks/bench_train_step.py
--conv_lowerings=auto,xla` times whole steps side by side.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

LOWERINGS = ('auto', 'xla')

# XLA:CPU (jax 0.10) hands large convolutions, dots, reductions and elementwise fusions
# to YNNPACK. Its convolutions' weight gradients run 2-3x slower than XLA's own Eigen
# kernels (ResNet-18 at 224px, batch 16, forward and backward: its stem 856 ms against
# 403, all its distinct convolutions 2.1x torch's time against 1.0x), and its elementwise
# fusions slow the depthwise shifted sums; its dots and reductions win. The train and eval
# steps (`steps.jit_steps`) keep YNNPACK to those two (README, Performance: the whole step
# before and after; `python benchmarks/bench_convs.py --image_size=224` per convolution).
CPU_COMPILER_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': ','.join(
    f'LIBRARY_FUSION_TYPE_{kind}' for kind in ('INDIVIDUAL_DOT', 'DOT', 'REDUCE'))}

# Output positions (Ho * Wo) at or below which 'auto' lowers any convolution to
# patches: a 2x2 map. At 4x4 the two are even (stride 1) and at 8x8 XLA's
# stride-1 3x3 convolution is twice as fast forward.
MAX_PATCH_POSITIONS = 4
# Strided convolutions with at least this many input channels go to patches
# at any size: XLA:CPU's gradient of a strided convolution is 2-3x slower than
# the matmul's (ResNet-50's 3x3/2 at 56x56: 567 ms against 341 ms forward and
# backward, batch 32). The 3-channel stems stay with XLA, where patches lose.
MIN_STRIDED_PATCH_CHANNELS = 16


def compiler_options() -> dict[str, str] | None:
  """`jax.jit(compiler_options=...)` for the train and eval steps: `CPU_COMPILER_OPTIONS` on
  a CPU backend whose XLA knows them, else None (XLA's defaults)."""
  return _known_cpu_options() if jax.default_backend() == 'cpu' else None


@functools.cache
def _known_cpu_options() -> dict[str, str] | None:
  try:  # An XLA that no longer has the option refuses the program: keep its defaults.
    jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(0.0).compile()
  except jax.errors.JaxRuntimeError:
    return None
  return CPU_COMPILER_OPTIONS


def _use_patches(kernel: Sequence[int], strides: Sequence[int], in_channels: int,
                 out_positions: int) -> bool:
  """The CPU rule, from per-convolution timings (benchmarks/bench_convs.py)."""
  return (out_positions <= MAX_PATCH_POSITIONS
          or tuple(kernel) == (1, 1)  # A pointwise convolution is a matmul (after a slice).
          or (max(strides) > 1 and in_channels >= MIN_STRIDED_PATCH_CHANNELS))


_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _explicit_padding(padding, in_spatial: Sequence[int], kernel: Sequence[int],
                      strides: Sequence[int]) -> list[tuple[int, int]]:
  if isinstance(padding, str):
    return list(lax.padtype_to_pads(in_spatial, kernel, strides, padding))
  return [tuple(p) for p in padding]


def _output_spatial(in_spatial, kernel, strides, pads) -> tuple[int, ...]:
  return tuple((size + lo + hi - k) // s + 1
               for size, k, s, (lo, hi) in zip(in_spatial, kernel, strides, pads))


def _padded_and_output_size(lhs: jax.Array, kernel: Sequence[int], strides: Sequence[int],
                            pads: Sequence[tuple[int, int]]) -> tuple[jax.Array, int, int]:
  (top, bottom), (left, right) = pads
  x = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
  return (x, *_output_spatial(lhs.shape[1:3], kernel, strides, pads))


def conv_as_patch_matmul(lhs: jax.Array, rhs: jax.Array, strides: Sequence[int],
                         pads: Sequence[tuple[int, int]], *, precision=None,
                         preferred_element_type=None) -> jax.Array:
  """An NHWC x HWIO convolution (no dilation, no groups) as strided slices and one matmul."""
  kh, kw, cin, cout = rhs.shape
  (sh, sw), n = strides, lhs.shape[0]
  x, out_h, out_w = _padded_and_output_size(lhs, (kh, kw), strides, pads)
  taps = [lax.slice(x, (0, i, j, 0), (n, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, cin),
                    (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  patches = jnp.concatenate(taps, axis=-1)  # Channel order (i, j, c) == rhs.reshape's.
  return jnp.einsum('nhwk,ko->nhwo', patches, rhs.reshape(kh * kw * cin, cout),
                    precision=precision, preferred_element_type=preferred_element_type)


def depthwise_as_shifted_sum(lhs: jax.Array, rhs: jax.Array, strides: Sequence[int],
                             pads: Sequence[tuple[int, int]], *,
                             preferred_element_type=None) -> jax.Array:
  """A depthwise NHWC convolution (HW1C kernel) as a sum of tap-shifted, scaled inputs.

  The sum is unrolled into one fused loop (`_shifted_sum`); with the gradients
  written out, ConvNeXt-T's train step compiles in 18 s (a scan over the taps:
  13 s; autodiff of the unrolled sum took 58 s). Products accumulate in float32
  (a bfloat16 sum of 49 taps would lose digits); the result comes back in the
  input's dtype unless `preferred_element_type` says otherwise.

  The gradients are written out too (`_depthwise_bwd`): autodiff would keep
  every tap's slice for the kernel's gradient, a [taps, N, H, W, C] buffer (25
  activations for a 5x5) filled and read once per step, which took a third of
  EfficientNet-B0's train step at 224px. The kernel's gradient stays a scan
  over the taps, one reduction each: unrolled, XLA's reductions ran 4x slower.
  """
  out_dtype = preferred_element_type or lhs.dtype
  return _depthwise(lhs, rhs, tuple(strides), tuple(tuple(p) for p in pads)).astype(out_dtype)


def _tap(x: jax.Array, tap_index: jax.Array, kw: int, strides: tuple[int, int],
         span: tuple[int, ...]) -> jax.Array:
  """Tap `tap_index` (row-major over the kernel) of padded `x`: the strided window it sees."""
  window = lax.dynamic_slice(x, (0, tap_index // kw, tap_index % kw, 0), span)
  return window[:, ::strides[0], ::strides[1]]


def _shifted_sum(x: jax.Array, weights: jax.Array, kernel: tuple[int, int],
                 strides: tuple[int, int], out_hw: tuple[int, int]) -> jax.Array:
  """sum over taps t of x[:, i_t::sh, j_t::sw][:out_h, :out_w] * weights[t] (x already padded),
  in float32: one fused loop that reads each input element from cache kh*kw times and
  writes the output once (a scan over the taps wrote its running sum once per tap: 2-4x
  slower at EfficientNet-B0's 112x112 and 56x56 maps)."""
  (kh, kw), (sh, sw), (out_h, out_w) = kernel, strides, out_hw
  n, channels = x.shape[0], x.shape[3]
  total = None
  for i in range(kh):
    for j in range(kw):
      tap = lax.slice(x, (0, i, j, 0), (n, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1,
                                        channels), (1, sh, sw, 1))
      term = tap.astype(jnp.float32) * weights[i * kw + j]
      total = term if total is None else total + term
  return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(lhs, rhs, strides, pads):
  kh, kw, _, channels = rhs.shape
  x, out_h, out_w = _padded_and_output_size(lhs, (kh, kw), strides, pads)
  weights = rhs.reshape(kh * kw, channels).astype(jnp.float32)
  return _shifted_sum(x, weights, (kh, kw), strides, (out_h, out_w))


def _depthwise_fwd(lhs, rhs, strides, pads):
  return _depthwise(lhs, rhs, strides, pads), (lhs, rhs)


def _depthwise_bwd(strides, pads, residuals, g):
  """The input's gradient is the same shifted sum over the (stride-dilated, re-padded)
  output gradient with the kernel flipped; the kernel's is one reduction per tap."""
  lhs, rhs = residuals
  kh, kw, _, channels = rhs.shape
  (sh, sw), ((top, _), (left, _)) = strides, pads
  n, height, width, _ = lhs.shape
  out_h, out_w = g.shape[1:3]
  x, _, _ = _padded_and_output_size(lhs, (kh, kw), strides, pads)
  span = (n, (out_h - 1) * sh + 1, (out_w - 1) * sw + 1, channels)

  def tap_gradient(_, tap_index):
    tap = _tap(x, tap_index, kw, strides, span)
    return None, jnp.sum(tap.astype(jnp.float32) * g, axis=(0, 1, 2))

  _, rhs_grad = lax.scan(tap_gradient, None, jnp.arange(kh * kw))
  # Input row r gets g[o] * w[r + top - o * sh]: dilate g by the stride, pad it so that
  # each of the flipped kernel's taps is a plain stride-1 slice, and sum.
  lo_h, lo_w = kh - 1 - top, kw - 1 - left
  dilated = lax.pad(g, jnp.array(0, g.dtype),
                    ((0, 0, 0), (lo_h, height + kh - 1 - lo_h - ((out_h - 1) * sh + 1), sh - 1),
                     (lo_w, width + kw - 1 - lo_w - ((out_w - 1) * sw + 1), sw - 1), (0, 0, 0)))
  flipped = rhs[::-1, ::-1].reshape(kh * kw, channels).astype(jnp.float32)
  lhs_grad = _shifted_sum(dilated, flipped, (kh, kw), (1, 1), (height, width))
  return lhs_grad.astype(lhs.dtype), rhs_grad.reshape(rhs.shape).astype(rhs.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def auto_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                              rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                              batch_group_count=1, precision=None, preferred_element_type=None,
                              out_sharding=None):
  """`lax.conv_general_dilated`, on CPU lowered as the module docstring says.

  The choice is made at trace time from the backend and the static shapes, so
  a jitted step holds one fixed program. Anything else (dilation, groups that
  are not depthwise, another layout, an explicit output sharding) goes to XLA
  as is.
  """
  xla = lambda: lax.conv_general_dilated(  # noqa: E731
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type, out_sharding=out_sharding)
  if (jax.default_backend() != 'cpu' or lhs.ndim != 4 or batch_group_count != 1
      or out_sharding is not None
      or any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
      or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)):
    return xla()
  strides = tuple(window_strides)
  pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2], strides)
  if feature_group_count != 1:
    if feature_group_count == lhs.shape[3] == rhs.shape[3] and rhs.shape[2] == 1:
      return depthwise_as_shifted_sum(lhs, rhs, strides, pads,
                                      preferred_element_type=preferred_element_type)
    return xla()  # Grouped, or depthwise with a channel multiplier.
  out_h, out_w = _output_spatial(lhs.shape[1:3], rhs.shape[:2], strides, pads)
  if not _use_patches(rhs.shape[:2], strides, rhs.shape[2], out_h * out_w):
    return xla()
  return conv_as_patch_matmul(lhs, rhs, strides, pads, precision=precision,
                              preferred_element_type=preferred_element_type)


def set_conv_lowering(model: nnx.Module, lowering: str) -> nnx.Module:
  """Sets how every `nnx.Conv` in `model` is lowered ('auto' or 'xla'); returns `model`.

  The function is static module data (part of the graph definition, not of the
  state), so parameters, checkpoints and pretrained weights are untouched.
  """
  if lowering not in LOWERINGS:
    raise ValueError(f'conv lowering must be one of {LOWERINGS}, got {lowering!r}')
  function = auto_conv_general_dilated if lowering == 'auto' else lax.conv_general_dilated
  for _, module in nnx.iter_modules(model):
    if isinstance(module, nnx.Conv):
      module.conv_general_dilated = function
  return model
