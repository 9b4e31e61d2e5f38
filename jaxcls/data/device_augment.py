"""On-device train augmentation: a pure function of (key, batch) for the jitted step.

The per-pixel float work (affine warps, colour jitter, grayscale, blur, noise,
random erasing and the RandAugment/TrivialAugment policies) runs here rather
than in the Grain pipeline: on an accelerator it costs next to nothing beside
the model, whereas on the host it would be per-example Python and PIL in the
threads that already decode and resize; and the batch still crosses the
host-to-device link as uint8. Geometric crops that need the source image at
full resolution (random resized crop) and exact pixel shifts and flips stay
on the host, in `jaxcls.data.transforms`.

Each example's random parameters are row i of one [N, K] uniform draw (plus
one for the policy and one per-pixel draw for noise and erasing fill), which
XLA compiles far faster than a threefry per op and example; with JAX's
partitionable threefry (the default) the values do not depend on how the
batch is sharded over devices. Each op reads its own columns, so switching
one op on or off does not change what another draws.

The colour, grayscale and solarize ops are dm-pix's; the affine warp and the
blur are not, being far slower under `vmap` on a CPU (see `_bilinear_pull`
and `gaussian_blur`).
"""

import math

import dm_pix as pix
import jax
import jax.numpy as jnp

from jaxcls.errors import ConfigProblems, either

# RandAugment's ops (Cubuk et al. 2020, as torchvision lists them). Under
# `vmap` a per-example `lax.switch` would run every branch anyway, so each op
# is written to be the identity unless drawn, and the five geometric ones
# share a single affine warp.
POLICY_OPS = ('identity', 'shear_x', 'shear_y', 'translate_x', 'translate_y',
              'rotate', 'brightness', 'color', 'contrast', 'sharpness',
              'posterize', 'solarize', 'autocontrast', 'equalize')

# The largest magnitude of each op: torchvision's RandAugment space and
# TrivialAugmentWide's (Muller & Hutter 2021) wider one. Shear is the affine
# coefficient, translation a fraction of the side (TrivialAugmentWide's 32
# pixels are taken at 224), rotation degrees, the enhance ops 1 +- this factor,
# posterize the bits removed and solarize the fraction of the range inverted.
_POLICY_MAX = {
    'randaugment': dict(shear=0.3, translate=150 / 331, rotate=30.0,
                        enhance=0.9, posterize_bits=4, solarize=1.0),
    'trivialaugment': dict(shear=0.99, translate=32 / 224, rotate=135.0,
                           enhance=0.99, posterize_bits=6, solarize=1.0),
}
# RandAugment's magnitude scale: `policy_magnitude` M means M / 30 of the max.
MAX_MAGNITUDE = 30
# config.data.augment.policy: none, or one of the policies above.
POLICIES = ('', *_POLICY_MAX)


def enabled(augment_config) -> bool:
  """Whether any on-device op is switched on (otherwise `augment_batch` is the identity)."""
  c = augment_config
  return bool(c.policy or _has_affine(c) or c.brightness or c.contrast or c.saturation or c.hue
              or c.grayscale_prob or c.blur_prob or c.noise_std or c.erasing_prob)


def config_errors(augment_config) -> list[str]:
  """What is wrong with `config.data.augment` (host and device ops alike)."""
  a, p = augment_config, ConfigProblems('data.augment', augment_config)

  def interval(field, low=0.0, high=float('inf'), low_open=True):
    value = tuple(a[field])
    ok = (len(value) == 2 and value[0] <= value[1] and
          (value[0] > low if low_open else value[0] >= low) and value[1] <= high)
    bounds = f'{"(" if low_open else "["}{low:g}, {high:g}]'
    p.check(ok, field, f'expected (low, high) with low <= high, both in {bounds}')

  p.check(a.random_crop_padding >= 0, 'random_crop_padding', 'must be >= 0')
  interval('random_resized_crop_scale', high=1.0)
  interval('random_resized_crop_ratio')
  p.check(0 <= a.affine_degrees <= 180, 'affine_degrees', 'must be in [0, 180]')
  p.check(0 <= a.affine_translate <= 1, 'affine_translate',
          'must be in [0, 1] (a fraction of the side)')
  interval('affine_scale')
  p.check(0 <= a.affine_shear < 90, 'affine_shear', 'must be in [0, 90) degrees')
  for field in ('brightness', 'contrast', 'saturation', 'noise_std'):
    p.check(a[field] >= 0, field, 'must be >= 0 (0: off)')
  p.check(0 <= a.hue <= 0.5, 'hue', 'must be in [0, 0.5] (a fraction of a turn)')
  for field in ('grayscale_prob', 'blur_prob', 'erasing_prob'):
    p.check(0 <= a[field] <= 1, field, 'must be a probability in [0, 1]')
  interval('blur_sigma')
  p.check(a.blur_kernel_size >= 3 and a.blur_kernel_size % 2 == 1, 'blur_kernel_size',
          'must be odd and >= 3')
  interval('erasing_scale', high=1.0)
  interval('erasing_ratio')
  p.check(a.erasing_value <= 1, 'erasing_value',
          'must be <= 1 (a fill in [0, 1], or negative: random noise)')
  p.check(a.policy in POLICIES, 'policy', f'expected {either(POLICIES)}')
  p.check(a.policy_num_ops >= 1, 'policy_num_ops', 'must be >= 1')
  p.check(0 <= a.policy_magnitude <= MAX_MAGNITUDE, 'policy_magnitude',
          f'must be in [0, {MAX_MAGNITUDE}]')
  return p


def augment_batch(key: jax.Array, images: jax.Array, augment_config) -> jax.Array:
  """Randomly augments a batch of images, each example independently.

  Args:
    key: a PRNG key; the same key and images give the same output.
    images: [N, H, W, 3] uint8, or float in [0, 255].
    augment_config: `config.data.augment`; its fields are read when tracing.

  Returns:
    The augmented images, of the same shape and dtype and in [0, 255]
    (rounded for integer dtypes).
  """
  if not enabled(augment_config):
    return images
  c = augment_config
  k_params, k_policy, k_pixels = jax.random.split(key, 3)
  params = jax.random.uniform(k_params, (images.shape[0], _NUM_PARAMS))
  policy_params = (jax.random.uniform(k_policy, (images.shape[0], c.policy_num_ops, 3))
                   if c.policy else jnp.zeros(images.shape[:1]))
  x = images.astype(jnp.float32) / 255.0
  noise, fill = _pixel_draws(k_pixels, x.shape, noise=bool(c.noise_std),
                             fill=bool(c.erasing_prob) and c.erasing_value < 0)
  x = jax.vmap(lambda *args: _augment_one(*args, c))(params, policy_params, x, noise, fill)
  x = jnp.clip(x, 0.0, 1.0) * 255.0
  if jnp.issubdtype(images.dtype, jnp.integer):
    x = jnp.round(x)
  return x.astype(images.dtype)


# Columns of each example's uniform parameters.
_COLUMNS = dict(affine=slice(0, 5), jitter=slice(5, 9), gray=9, blur=slice(10, 12),
                erase=slice(12, 17))
_NUM_PARAMS = 17


def _pixel_draws(key, shape, *, noise: bool, fill: bool):
  """Per-pixel standard normal noise and uniform fill (8-bit), if asked.

  Drawn together as 32-bit words split into 16- or 8-bit values, and the
  normals by Box-Muller (two per pair of 16-bit uniforms): threefry and
  `ndtri` would otherwise be most of the cost of these ops on a CPU.
  """
  batch, size = shape[0], math.prod(shape[1:])
  noise_words = -(-size // 2) if noise else 0
  fill_words = -(-size // 4) if fill else 0
  words = jax.random.bits(key, (batch, noise_words + fill_words), jnp.uint32)

  def uniform(part, dtype):  # Midpoints of the 2^bits cells of (0, 1), [batch, words, k].
    values = jax.lax.bitcast_convert_type(part, dtype).astype(jnp.float32)
    return (values + 0.5) / (jnp.iinfo(dtype).max + 1.0)

  placeholder = jnp.zeros(shape[:1])
  noise_values = fill_values = placeholder
  if noise:
    pairs = uniform(words[:, :noise_words], jnp.uint16)
    radius = jnp.sqrt(-2.0 * jnp.log(pairs[..., 0]))
    angle = 2.0 * jnp.pi * pairs[..., 1]
    normals = jnp.concatenate([radius * jnp.cos(angle), radius * jnp.sin(angle)], axis=1)
    noise_values = normals[:, :size].reshape(shape)
  if fill:
    fill_values = uniform(words[:, noise_words:], jnp.uint8).reshape(batch, -1)[:, :size]
    fill_values = fill_values.reshape(shape)
  return noise_values, fill_values


def _has_affine(c) -> bool:
  return bool(c.affine_degrees or c.affine_translate or c.affine_shear or
              tuple(c.affine_scale) != (1.0, 1.0))


def _augment_one(u, u_policy, image, noise, fill, c):
  """One [H, W, 3] float image in [0, 1] through the enabled ops.

  The policy comes first and erasing last, as in timm. `u` and `u_policy`
  hold the example's uniform parameters, `noise` and `fill` its per-pixel
  draws.
  """
  if c.policy:
    image = _policy(u_policy, image, c.policy, c.policy_magnitude)
  if _has_affine(c):
    image = _random_affine(u[_COLUMNS['affine']], image, c)
  if c.brightness or c.contrast or c.saturation or c.hue:
    image = _color_jitter(u[_COLUMNS['jitter']], image, c)
  if c.grayscale_prob:
    image = jnp.where(u[_COLUMNS['gray']] < c.grayscale_prob,
                      pix.rgb_to_grayscale(image, keep_dims=True), image)
  if c.blur_prob:
    image = _random_blur(u[_COLUMNS['blur']], image, c)
  if c.noise_std:
    image = jnp.clip(image + c.noise_std * noise, 0, 1)
  if c.erasing_prob:
    image = _random_erasing(u[_COLUMNS['erase']], image, fill, c)
  return image


def _scaled(u, bounds):
  """A uniform draw `u` in [0, 1) mapped to [low, high)."""
  low, high = bounds
  return low + (high - low) * u


# ---------------------------------------------------------------- geometry ---

def affine(image, *, degrees=0.0, translate=(0.0, 0.0), scale=1.0, shear=(0.0, 0.0)):
  """Warps [H, W, C] about its centre, bilinear, outside the image black.

  `translate` is (dy, dx) in pixels and `shear` (x, y) affine coefficients.
  The parameters may be traced; all zero (scale 1) is exactly the identity.
  """
  height, width = image.shape[:2]
  angle = jnp.deg2rad(degrees)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  # The forward map in (y, x) coordinates: scale * rotation @ shear.
  shear_x, shear_y = shear
  forward = scale * jnp.array([[cos, -sin], [sin, cos]]) @ jnp.array(
      [[1.0, shear_y], [shear_x, 1.0]])
  # Pull: input = inverse @ (output - centre - translation) + centre.
  inverse = jnp.linalg.inv(forward)
  centre = jnp.array([(height - 1) / 2, (width - 1) / 2])
  offset = centre - inverse @ (centre + jnp.asarray(translate, jnp.float32))
  return _bilinear_pull(image, inverse, offset)


def _bilinear_pull(image, matrix, offset):
  """out[o] = image[matrix @ o + offset], bilinear, with zeros outside the image.

  Not dm-pix's `affine_transform`: its `map_coordinates` interpolates in 3-D
  (8 scalar gathers per value, the channel axis included), ~100x slower on a
  CPU than these 4 gathers of whole pixels.
  """
  height, width, channels = image.shape
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32), indexing='ij')
  source_y = matrix[0, 0] * rows + matrix[0, 1] * cols + offset[0]
  source_x = matrix[1, 0] * rows + matrix[1, 1] * cols + offset[1]
  top, left = jnp.floor(source_y), jnp.floor(source_x)
  pixels = image.reshape(height * width, channels)
  out = jnp.zeros_like(image)
  for y, weight_y in ((top, 1 - (source_y - top)), (top + 1, source_y - top)):
    for x, weight_x in ((left, 1 - (source_x - left)), (left + 1, source_x - left)):
      inside = (y >= 0) & (y <= height - 1) & (x >= 0) & (x <= width - 1)
      index = (jnp.clip(y, 0, height - 1) * width + jnp.clip(x, 0, width - 1)).astype(jnp.int32)
      weight = jnp.where(inside, weight_y * weight_x, 0.0)[..., None]
      out = out + weight * pixels[index.reshape(-1)].reshape(height, width, channels)
  return out


def _random_affine(u, image, c):
  """torchvision's RandomAffine: angle, translation, scale and x-shear drawn uniformly."""
  height, width = image.shape[:2]
  d, t, s = c.affine_degrees, c.affine_translate, math.tan(math.radians(c.affine_shear))
  return affine(image, degrees=_scaled(u[0], (-d, d)),
                translate=(_scaled(u[1], (-t, t)) * height, _scaled(u[2], (-t, t)) * width),
                scale=_scaled(u[3], c.affine_scale), shear=(_scaled(u[4], (-s, s)), 0.0))


# ------------------------------------------------------------------ colour ---

def _color_jitter(u, image, c):
  """torchvision's ColorJitter factors (in a fixed order: brightness, contrast, saturation, hue)."""
  factor = lambda u, amount: _scaled(u, (max(0.0, 1.0 - amount), 1.0 + amount))
  if c.brightness:
    image = jnp.clip(image * factor(u[0], c.brightness), 0, 1)
  if c.contrast:
    image = jnp.clip(pix.adjust_contrast(image, factor(u[1], c.contrast)), 0, 1)
  if c.saturation:
    image = jnp.clip(pix.adjust_saturation(image, factor(u[2], c.saturation)), 0, 1)
  if c.hue:
    image = jnp.clip(pix.adjust_hue(image, _scaled(u[3], (-c.hue, c.hue))), 0, 1)
  return image


def gaussian_blur(image, sigma, kernel_size: int):
  """Separable Gaussian blur of [H, W, C] with reflected edges; `sigma` may be traced.

  Shifted sums rather than dm-pix's `gaussian_blur`: under `vmap` with a
  sigma per example its depthwise convolution becomes a grouped convolution
  over batch x channels, ~30x slower on a CPU.
  """
  radius = kernel_size // 2
  taps = jnp.exp(-jnp.arange(-radius, radius + 1) ** 2 / (2.0 * sigma ** 2))
  taps = taps / taps.sum()
  height, width = image.shape[:2]
  padded = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)), mode='reflect')
  image = sum(taps[i] * padded[i:i + height] for i in range(kernel_size))
  padded = jnp.pad(image, ((0, 0), (radius, radius), (0, 0)), mode='reflect')
  return sum(taps[i] * padded[:, i:i + width] for i in range(kernel_size))


def _random_blur(u, image, c):
  """Gaussian blur with probability `blur_prob`, sigma uniform in `blur_sigma`."""
  blurred = gaussian_blur(image, _scaled(u[1], c.blur_sigma), c.blur_kernel_size)
  return jnp.where(u[0] < c.blur_prob, blurred, image)


def erasing_box(u, height, width, scale, ratio):
  """(top, left, box height, box width) of a random-erasing box (Zhong et al. 2020).

  From four uniform draws `u`: area a uniform fraction in `scale` of the image
  and aspect (height / width) log-uniform in `ratio`, clipped to the image.
  """
  area = _scaled(u[0], scale) * height * width
  aspect = jnp.exp(_scaled(u[1], (math.log(ratio[0]), math.log(ratio[1]))))
  box_h = jnp.clip(jnp.round(jnp.sqrt(area * aspect)), 1, height).astype(jnp.int32)
  box_w = jnp.clip(jnp.round(jnp.sqrt(area / aspect)), 1, width).astype(jnp.int32)
  top = jnp.floor(u[2] * (height - box_h + 1)).astype(jnp.int32)
  left = jnp.floor(u[3] * (width - box_w + 1)).astype(jnp.int32)
  return top, left, box_h, box_w


def _random_erasing(u, image, fill, c):
  height, width = image.shape[:2]
  top, left, box_h, box_w = erasing_box(u[1:], height, width, c.erasing_scale, c.erasing_ratio)
  rows = jnp.arange(height)[:, None, None]
  cols = jnp.arange(width)[None, :, None]
  inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
  if c.erasing_value >= 0:
    fill = c.erasing_value
  return jnp.where(inside & (u[0] < c.erasing_prob), fill, image)


# ------------------------------------------------------ RandAugment family ---

def _blend(degenerate, image, factor):
  """PIL's ImageEnhance: factor 1 is the image, 0 the degenerate one."""
  return jnp.clip(degenerate + factor * (image - degenerate), 0, 1)


def _sharpness_degenerate(image):
  """PIL's SMOOTH filter ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13), border pixels kept."""
  height, width = image.shape[:2]
  padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)), mode='edge')
  columns = padded[:height] + padded[1:height + 1] + padded[2:]
  total = columns[:, :width] + columns[:, 1:width + 1] + columns[:, 2:]
  smooth = (total + 4 * image) / 13
  rows = jnp.arange(height)[:, None, None]
  cols = jnp.arange(width)[None, :, None]
  interior = (rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1)
  return jnp.where(interior, smooth, image)


def _autocontrast(image):
  low = image.min(axis=(0, 1), keepdims=True)
  high = image.max(axis=(0, 1), keepdims=True)
  spread = high - low
  return jnp.where(spread > 0, (image - low) / jnp.where(spread > 0, spread, 1), image)


def _equalize(image):
  """PIL's ImageOps.equalize, per channel, on the 8-bit values."""
  def channel(values):  # [H, W] int32 in [0, 255]
    histogram = jnp.bincount(values.ravel(), length=256)
    last = histogram[255 - jnp.argmax(histogram[::-1] > 0)]
    step = (histogram.sum() - last) // 255
    lut = (jnp.cumsum(histogram) - histogram + step // 2) // jnp.maximum(step, 1)
    return jnp.where(step == 0, values, jnp.clip(lut, 0, 255)[values])
  values = jnp.round(image * 255).astype(jnp.int32)
  return jax.vmap(channel, in_axes=-1, out_axes=-1)(values).astype(jnp.float32) / 255


def _policy(u, image, policy, magnitude):
  """RandAugment (ops at `magnitude` / 30) or TrivialAugment (random magnitude).

  Row i of `u` holds the (op, magnitude, sign) draws of the i-th op applied;
  TrivialAugment applies one.
  """
  top = _POLICY_MAX[policy]
  height, width = image.shape[:2]
  if policy == 'trivialaugment':
    u = u[:1]
  for u_op, u_magnitude, u_sign in u:
    op = jnp.minimum(jnp.floor(u_op * len(POLICY_OPS)), len(POLICY_OPS) - 1)
    if policy == 'trivialaugment':
      m = jnp.minimum(jnp.floor(u_magnitude * (MAX_MAGNITUDE + 1)), MAX_MAGNITUDE) / MAX_MAGNITUDE
    else:
      m = magnitude / MAX_MAGNITUDE
    signed = jnp.where(u_sign < 0.5, -1.0, 1.0) * m
    drawn = lambda name: op == POLICY_OPS.index(name)
    amount = lambda name, value: jnp.where(drawn(name), value, 0.0)

    image = affine(
        image, degrees=amount('rotate', signed * top['rotate']),
        translate=(amount('translate_y', signed * top['translate'] * height),
                   amount('translate_x', signed * top['translate'] * width)),
        shear=(amount('shear_x', signed * top['shear']), amount('shear_y', signed * top['shear'])))
    enhance = lambda name: 1.0 + amount(name, signed * top['enhance'])
    image = jnp.clip(image * enhance('brightness'), 0, 1)
    image = _blend(pix.rgb_to_grayscale(image, keep_dims=True), image, enhance('color'))
    mean_gray = pix.rgb_to_grayscale(image).mean()
    image = _blend(mean_gray, image, enhance('contrast'))
    image = _blend(_sharpness_degenerate(image), image, enhance('sharpness'))
    shift = 2.0 ** jnp.round(m * top['posterize_bits'])
    posterized = jnp.floor(jnp.round(image * 255) / shift) * shift / 255
    image = jnp.where(drawn('posterize'), posterized, image)
    # Threshold above 1 inverts nothing.
    image = pix.solarize(image, jnp.where(drawn('solarize'), 1.0 - m * top['solarize'], 2.0))
    image = jnp.where(drawn('autocontrast'), _autocontrast(image), image)
    image = jnp.where(drawn('equalize'), _equalize(image), image)
  return image


def random_crop_flip(key: jax.Array, images: jax.Array, padding: int,
                     flip: bool) -> jax.Array:
  """The host's `transforms.Augment` on a device batch: pad-and-crop, then flip.

  Zero-pads each side by `padding` and crops back at an offset drawn per
  example (the same law as `transforms.random_crop`), then mirrors each
  example left-right with probability 1/2 if `flip`. Used by the on-device
  data set (`jaxcls.data.on_device`), where no host touches the examples.
  """
  k_offset, k_flip = jax.random.split(key)
  n, height, width, _ = images.shape
  if padding > 0:
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(k_offset, (n, 2), 0, 2 * padding + 1)
    images = jax.vmap(lambda image, o: jax.lax.dynamic_slice(
        image, (o[0], o[1], 0), (height, width, image.shape[-1])))(padded, offsets)
  if flip:
    mirrored = jax.random.bernoulli(k_flip, 0.5, (n,))
    images = jnp.where(mirrored[:, None, None, None], images[:, :, ::-1], images)
  return images
