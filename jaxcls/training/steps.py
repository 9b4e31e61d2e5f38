"""The jitted train and eval steps: pure functions of (state, batch).

Everything the steps need besides the state and the batch (the model's graphs,
the optimizer, the loss, augmentation and mixing, normalisation constants,
what trains) is one frozen `StepSpec`, bound before `jax.jit`, so the steps
stay pure and the loop around them owns every side effect.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from clu import metrics as clu_metrics
from flax import nnx

from jaxcls.data import device_augment
from jaxcls.data.mixing import MixParams, Mixup, mix_images, mix_targets
from jaxcls.models.conv import compiler_options
from jaxcls.models.heads import get_submodule
from jaxcls.training import losses, optim
from jaxcls.training.finetune import Trainable
from jaxcls.training.losses import LossFn
from jaxcls.training.metrics import NO_STEP, train_metrics_class


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data position (derived from `step`)."""
  step: jax.Array
  params: Any
  # Non-parameter variables: BatchNorm running statistics and the like.
  model_state: Any
  # The optimizer's, learning-rate schedule and ReduceLROnPlateau's scale included
  # (`optim.create_optimizer`).
  opt_state: Any
  # Raw uint32 key for on-device randomness; folded with the step each step.
  rng: jax.Array
  # The exponential moving average of the weights (`train.ema_decay` > 0): {'params',
  # 'model_state'}, BatchNorm's running statistics averaged alike (`update_ema`); None: off.
  ema: Any = None


# `fold_in` constants of the step key: one stream per use, so switching one on
# or off does not change what the other draws.
AUGMENT_STREAM = 0
MIX_STREAM = 1


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.GraphDef, nnx.State, nnx.State]:
  """-> (train graph, eval graph, params, model state).

  Two graph definitions, one with BatchNorm in training mode and one using the
  running averages, let the steps merge the graph they need without mutating
  a module inside the traced function.
  """
  model.train()
  train_graph, params, model_state = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_graph = nnx.split(model, nnx.Param, ...)[0]
  return train_graph, eval_graph, params, model_state


def new_train_state(params: nnx.State, model_state: nnx.State,
                    tx: optax.GradientTransformation, seed: int, *,
                    ema: bool = False) -> TrainState:
  """Step 0 of training `params` with `tx`; with `ema`, an average starting at them."""
  average = None
  if ema:  # Copies: the train step donates the state, and no buffer may be donated twice.
    average = jax.tree.map(jnp.array, {'params': params, 'model_state': model_state})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=tx.init(params), rng=jax.random.PRNGKey(seed), ema=average)


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
  """The EMA's decay for the update that follows `step` updates (0-based).

  With `warmup`, timm's (`ModelEmaV3`): 1 - (1 + step)^(-2/3), capped at `decay`:
  0 at the first update (the average starts at the first trained weights, not at
  the initial ones), 0.37 at the second, 0.9 after 31 updates, 0.99 after 1000,
  so a short fine-tuning run's average follows its weights instead of staying near
  the pretrained ones. Without it, `decay` from the first update on.
  """
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  ramp = 1.0 - (1.0 + step.astype(jnp.float32)) ** (-2.0 / 3.0)
  return jnp.minimum(ramp, decay)


def update_ema(ema: dict, params: nnx.State, model_state: nnx.State, decay: jax.Array) -> dict:
  """decay * ema + (1 - decay) * new, for the parameters and the floating model state.

  BatchNorm's running mean and variance are averaged with the weights, as timm's
  ModelEma averages a module's buffers: the statistics then belong to averaged
  weights of the same period. Integer state (counters, RNG keys) is taken as it is.
  """
  def average(old, new):
    if not jnp.issubdtype(new.dtype, jnp.floating):
      return new
    return (decay * old.astype(jnp.float32)
            + (1.0 - decay) * new.astype(jnp.float32)).astype(new.dtype)

  return jax.tree.map(average, ema, {'params': params, 'model_state': model_state})


def ema_view(state: TrainState) -> TrainState:
  """`state` with the EMA's parameters and model state in place of the trained ones (for
  evaluating them with the same eval step)."""
  return state.replace(params=state.ema['params'], model_state=state.ema['model_state'])


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation,
                       seed: int) -> tuple[nnx.GraphDef, nnx.GraphDef, TrainState]:
  """Splits a model into (train graph, eval graph, step-0 state)."""
  train_graph, eval_graph, params, model_state = split_model(model)
  return train_graph, eval_graph, new_train_state(params, model_state, tx, seed)


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """What the jitted steps are built from besides (state, batch); all static under jit.

  A fine-tuning phase (its optimizer, its train graph with the frozen groups in
  inference mode, `trainable`) is part of it, so a schedule re-jits once per
  phase; so are `augment` (`config.data.augment`, read when tracing) and `mixup`.
  """
  train_graph: nnx.GraphDef
  eval_graph: nnx.GraphDef
  tx: optax.GradientTransformation  # `optim.create_optimizer`: the learning rate inside.
  metrics_cls: type[clu_metrics.Collection]  # Of the eval step (`metrics.eval_metrics_class`).
  mean: tuple[float, ...]
  std: tuple[float, ...]
  dtype: str = 'float32'
  loss_fn: LossFn = losses.cross_entropy  # Of (logits, soft targets): `losses.make_loss_fn`.
  augment: Any = None  # `config.data.augment`; None: no on-device augmentation.
  mixup: Mixup | None = None
  trainable: Trainable | None = None  # Which params train (`finetune.Trainable`); None: all.
  task_loss_weights: tuple[float, ...] | None = None  # A `MultiTaskHead`'s loss weights.
  train_metrics_cls: type[clu_metrics.Collection] | None = None  # None: `train_metrics_class`.
  grad_accum_steps: int = 1  # Micro-batches per train step (`accumulated_grads`); 1: off.
  ema_decay: float = 0.0  # The weights' EMA (`update_ema`) where the state holds one.
  ema_warmup: bool = True  # `ema_decay_at`.
  # The batches hold the frozen backbone's pooled features (batch['features'], cached by
  # `feature_cache`), not images: `jit_steps` gives `head_train_step` and `head_eval_step`.
  on_features: bool = False

  def __post_init__(self):
    set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
    set_('mean', tuple(self.mean))
    set_('std', tuple(self.std))
    set_('augment', _static_augment(self.augment))
    set_('mixup', _static_mixup(self.mixup))
    if self.train_metrics_cls is None:
      set_('train_metrics_cls', train_metrics_class(mixing=self.mixup is not None))
    if self.grad_accum_steps < 1:
      raise ValueError(f'StepSpec(grad_accum_steps={self.grad_accum_steps}): must be >= 1')
    if self.on_features and (self.augment is not None or self.mixup is not None):
      raise ValueError('StepSpec(on_features=True): pooled features cannot be augmented or '
                       'mixed like images; such runs take the full forward pass')

  def check_batch_size(self, batch_size: int) -> None:
    """Raises unless a batch of `batch_size` deals into `grad_accum_steps` micro-batches."""
    k = self.grad_accum_steps
    if k > 1 and batch_size % (2 * k):
      raise ValueError(f'grad_accum_steps={k}: a batch of {batch_size} does not deal into {k} '
                       'micro-batches of an even size (batch size a multiple of '
                       f'{2 * k})')


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float],
              dtype: jnp.dtype) -> jax.Array:
  """uint8 (or float in [0, 255]) images -> (x / 255 - mean) / std in the compute dtype."""
  x = images.astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)


def augment_and_mix(rng: jax.Array, step: jax.Array, images: jax.Array, *,
                    augment_config=None, mixup: Mixup | None = None
                    ) -> tuple[jax.Array, MixParams | None]:
  """The train images of `step` as the model sees them, before normalisation.

  On-device augmentation (`device_augment.augment_batch`), then Mixup/CutMix
  images, each from its own stream of the step's key. Returns the images
  (uint8 without mixing, float32 in [0, 255] with it) and the mixing drawn,
  which the targets follow (None: no mixing).
  """
  step_key = jax.random.fold_in(rng, step)
  if augment_config is not None:
    images = device_augment.augment_batch(jax.random.fold_in(step_key, AUGMENT_STREAM), images,
                                          augment_config)
  if mixup is None:
    return images, None
  draw = mixup.sample(jax.random.fold_in(step_key, MIX_STREAM), *images.shape[:3])
  return mix_images(draw, images), draw


def task_targets(head: nnx.Module, labels: jax.Array) -> dict[str, jax.Array]:
  """{task: one-hot [B, task classes]} of combined-class `labels` for a `MultiTaskHead`."""
  table = jnp.asarray(head.class_tasks, jnp.int32)  # [classes, tasks]
  return {name: jax.nn.one_hot(table[labels, t], head.heads[name].out_features)
          for t, name in enumerate(head.task_names)}


def multitask_loss(model: nnx.Module, features: jax.Array, targets: dict[str, jax.Array],
                   weights: Sequence[float], loss_fn: LossFn) -> tuple[jax.Array, jax.Array]:
  """(sum_t w_t * mean loss of task t, joint class scores) for a `MultiTaskHead`.

  `features` are the model's pooled features of the batch; `targets` holds each
  task's soft targets (`task_targets`, mixed or not).
  """
  head = get_submodule(model, model.head_name)
  task_logits = head.task_logits(features)
  loss = sum(w * loss_fn(task_logits[name].astype(jnp.float32), targets[name]).mean()
             for name, w in zip(head.task_names, weights))
  return loss, head(features).astype(jnp.float32)




def train_step(state: TrainState, batch: dict[str, jax.Array], spec: StepSpec
               ) -> tuple[TrainState, clu_metrics.Collection]:
  """One optimizer step on the trainable parameters (`spec.trainable`).

  The images are augmented and mixed (`augment_and_mix`), the one-hot targets
  mixed alike, and `spec.loss_fn(logits, soft targets)` averaged over the
  batch. Under mixing, the metrics' `labels` are the dominant labels
  (`metrics.train_metrics_class(mixing=True)` names the accuracies so).

  The params are split by `spec.trainable` and only the trainable part is
  differentiated: the frozen part enters the loss as a constant, so the
  backward pass stops at the first trainable layer and XLA never computes the
  frozen prefix's. Frozen params get zero gradients, which their optimizer
  (`optax.set_to_zero()`) never uses.

  With `spec.task_loss_weights`, the model's head is a `MultiTaskHead` and the
  loss is the weighted sum of the per-task losses, each task's targets mixed
  with the same lambdas. A model with auxiliary classifiers in training
  (`Classifier.logits_and_aux`: GoogLeNet's) adds `model.aux_weight` times
  each one's loss, as the paper trains; the metrics' logits are the main head's.

  With `spec.grad_accum_steps` k > 1 the gradient is the mean over k
  micro-batches (`accumulated_grads`), still one optimizer update per step.

  A state with an EMA (`new_train_state(ema=True)`) updates it from the new
  weights (`update_ema`); a skipped (non-finite) step leaves it as it was.
  """
  spec.check_batch_size(batch['image'].shape[0])
  images, draw = augment_and_mix(state.rng, state.step, batch['image'], augment_config=spec.augment,
                                 mixup=spec.mixup)
  images = normalize(images, spec.mean, spec.std, jnp.dtype(spec.dtype))
  return _update(state, spec, images, batch['label'], draw)


def head_train_step(state: TrainState, batch: dict[str, jax.Array], spec: StepSpec
                    ) -> tuple[TrainState, clu_metrics.Collection]:
  """`train_step` on the frozen backbone's pooled features (`batch['features']`).

  Valid only where the features are a pure function of the image (feature
  extraction without random augmentation or mixing, `feature_cache.decide`):
  then `model.classify(features)` is the step's forward pass, and the update,
  loss, EMA and metrics are `train_step`'s, on the same full train state, so
  its checkpoints are those of an uncached run.
  """
  spec.check_batch_size(batch['features'].shape[0])
  return _update(state, spec, batch['features'], batch['label'], None)


def _update(state: TrainState, spec: StepSpec, inputs: jax.Array, labels: jax.Array,
            draw: MixParams | None) -> tuple[TrainState, clu_metrics.Collection]:
  """The optimizer step of `train_step` on normalised images (or `spec.on_features`: features)."""
  trainable, frozen = nnx.split_state(state.params, spec.trainable or nnx.Everything(), ...)
  (loss, (logits, metric_labels, model_state)), grads = accumulated_grads(
      spec, trainable, frozen, state.model_state, inputs, labels, draw)
  all_grads = nnx.merge_state(grads, jax.tree.map(jnp.zeros_like, frozen))
  updates, opt_state = spec.tx.update(all_grads, state.opt_state, state.params)
  updated = state.replace(params=optax.apply_updates(state.params, updates),
                          model_state=model_state, opt_state=opt_state)
  if state.ema is not None:
    updated = updated.replace(ema=update_ema(
        state.ema, updated.params, model_state,
        ema_decay_at(state.step, spec.ema_decay, spec.ema_warmup)))
  # A non-finite loss or gradient never reaches the state: the step leaves it
  # as it was (the loop stops or skips on `nonfinite_step`).
  finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
  new_state = new_state.replace(step=state.step + 1)
  step_metrics = spec.train_metrics_cls.single_from_model_output(
      loss=loss, logits=logits, labels=metric_labels,
      learning_rate=optim.learning_rate(opt_state),
      nonfinite_step=jnp.where(finite, NO_STEP, state.step + 1))
  return new_state, step_metrics


def _loss_and_grads(spec: StepSpec, trainable, frozen, model_state, images, labels, draw):
  """((mean loss, (logits, metric labels, model state after)), gradient) of one batch."""

  def loss_of(trainable):
    model = nnx.merge(spec.train_graph, trainable, frozen, model_state, copy=True)
    loss, logits, metric_labels = _loss_and_logits(model, images, labels, draw, spec)
    return loss, (logits, metric_labels, nnx.split(model, nnx.Param, ...)[2])

  return jax.value_and_grad(loss_of, has_aux=True)(trainable)


def accumulated_grads(spec: StepSpec, trainable, frozen, model_state, images, labels, draw):
  """`_loss_and_grads` of the batch as `spec.grad_accum_steps` micro-batches, one at a time.

  The batch, already augmented and its images mixed as a whole (so the draws
  are those of the unsplit step), is dealt into k micro-batches of equal, even
  size (`_deal`), each holding the Mixup partner (example B-1-i) of each of its
  examples, so the targets mix within it as in the whole batch; a `lax.scan`
  runs forward and backward on each micro-batch in turn, carrying
  the model state and the sums of gradient and loss; only one micro-batch's
  activations are alive at a time (on accelerators: a CPU unrolls the loop,
  `_unroll_micro_batches`). Returns the mean loss and mean gradient, the
  logits and labels back in batch order, and the model state after the last.

  Semantics: each micro-batch's loss is its mean over its examples, and the
  micro-batches are equal in size, so the mean of their gradients is the
  gradient of the whole batch's mean loss whenever the forward pass of an
  example does not depend on the others: BatchNorm frozen or using its running
  statistics (a frozen group, feature extraction) or absent. That step equals
  the unsplit one up to float summation order (tested at rtol 1e-5). BatchNorm
  in training mode normalises each micro-batch by its own statistics and
  updates the running averages once per micro-batch, in order (the model state
  is threaded through the scan), as k forward passes in PyTorch's accumulation
  do: not the unsplit batch's statistics, so not its step.
  """
  k = spec.grad_accum_steps
  if k == 1:
    return _loss_and_grads(spec, trainable, frozen, model_state, images, labels, draw)
  micro_batches = jax.tree.map(lambda x: _deal(x, k), (images, labels, draw))

  def accumulate(carry, micro_batch):
    model_state, grad_sum, loss_sum = carry
    (loss, (logits, metric_labels, model_state)), grads = _loss_and_grads(
        spec, trainable, frozen, model_state, *micro_batch)
    return ((model_state, jax.tree.map(jnp.add, grad_sum, grads), loss_sum + loss),
            (logits, metric_labels))

  start = (model_state, jax.tree.map(jnp.zeros_like, trainable), jnp.zeros((), jnp.float32))
  (model_state, grad_sum, loss_sum), (logits, metric_labels) = jax.lax.scan(
      accumulate, start, micro_batches, unroll=_unroll_micro_batches())
  grads = jax.tree.map(lambda g: g / k, grad_sum)
  return (loss_sum / k, (_undeal(logits), _undeal(metric_labels), model_state)), grads


def _unroll_micro_batches() -> bool:
  """On a CPU the micro-batches run unrolled: XLA's CPU backend runs convolutions inside a
  while loop's body far slower than outside (the default digits step with 2 micro-batches,
  side by side on 2 cores: 14 img/s in a loop, 162 unrolled, 165 without accumulation). On
  an accelerator the loop stays, so only one micro-batch's activations are alive at a time,
  which is what accumulation is for."""
  return jax.default_backend() == 'cpu'


def _deal(x: jax.Array, k: int) -> jax.Array:
  """[B, ...] -> [k, B / k, ...]: micro-batch j holds the examples j, j + k, j + 2k, ... of
  the first half, then their partners B-1-i in reverse order, so that flipping a
  micro-batch (Mixup's pairing) pairs each example with the partner it has in the batch."""
  half = x.shape[0] // 2
  strided = lambda y: y.reshape(half // k, k, *y.shape[1:]).swapaxes(0, 1)  # noqa: E731
  first, partners = strided(x[:half]), strided(jnp.flip(x, 0)[:half])
  return jnp.concatenate([first, jnp.flip(partners, 1)], axis=1)


def _undeal(x: jax.Array) -> jax.Array:
  """The inverse of `_deal`: [k, B / k, ...] -> [B, ...] in batch order."""
  n = x.shape[1] // 2
  unstrided = lambda y: y.swapaxes(0, 1).reshape(-1, *y.shape[2:])  # noqa: E731
  first, partners = unstrided(x[:, :n]), unstrided(jnp.flip(x[:, n:], 1))
  return jnp.concatenate([first, jnp.flip(partners, 0)], axis=0)


def _loss_and_logits(model, inputs, labels, draw, spec: StepSpec):
  """(mean loss, float32 logits, labels for the metrics) of one batch, targets mixed by `draw`.

  `inputs`: normalised images, or with `spec.on_features` the pooled features.
  """
  if spec.task_loss_weights is None:
    # Auxiliary classifiers (GoogLeNet's) give logits only while they train (never on
    # cached features: `feature_cache` caches only where none trains).
    logits, aux_logits = ((model.classify(inputs), ()) if spec.on_features
                          else model.logits_and_aux(inputs))
    logits = logits.astype(jnp.float32)
    targets = {'class': jax.nn.one_hot(labels, logits.shape[-1])}
  else:
    head = get_submodule(model, model.head_name)
    targets = {'class': jax.nn.one_hot(labels, len(head.class_tasks)),
               'tasks': task_targets(head, labels)}
  dominant = {'class': labels}
  if draw is not None:
    targets, dominant = mix_targets(draw, targets)
  if spec.task_loss_weights is None:
    loss = spec.loss_fn(logits, targets['class']).mean()
    for aux in aux_logits:  # The same targets, mixed alike, weighted by the model's aux weight.
      loss += model.aux_weight * spec.loss_fn(aux.astype(jnp.float32), targets['class']).mean()
  else:
    features = inputs if spec.on_features else model.features(inputs)
    loss, logits = multitask_loss(model, features, targets['tasks'], spec.task_loss_weights,
                                  spec.loss_fn)
  return loss, logits, dominant['class']


def eval_step(state: TrainState, batch: dict[str, jax.Array],
              spec: StepSpec) -> clu_metrics.Collection:
  """Metrics of one padded batch; `batch['mask']` hides the padding.

  The loss is the plain cross-entropy whatever the training loss, so
  validation losses compare across losses, smoothing and class weights.
  """
  model = nnx.merge(spec.eval_graph, state.params, state.model_state)
  logits = model(normalize(batch['image'], spec.mean, spec.std,
                           jnp.dtype(spec.dtype))).astype(jnp.float32)
  return _eval_metrics(spec, logits, batch)


def head_eval_step(state: TrainState, batch: dict[str, jax.Array],
                   spec: StepSpec) -> clu_metrics.Collection:
  """`eval_step` on the pooled features (`batch['features']`, computed in eval mode)."""
  model = nnx.merge(spec.eval_graph, state.params, state.model_state)
  return _eval_metrics(spec, model.classify(batch['features']).astype(jnp.float32), batch)


def _eval_metrics(spec: StepSpec, logits: jax.Array, batch) -> clu_metrics.Collection:
  loss = losses.cross_entropy(logits, jax.nn.one_hot(batch['label'], logits.shape[-1]))
  return spec.metrics_cls.single_from_model_output(
      loss=loss, logits=logits, labels=batch['label'], mask=batch['mask'])


def _static_augment(augment_config):
  """An immutable view of `config.data.augment` for tracing; None where every op is off."""
  if augment_config is None or not device_augment.enabled(augment_config):
    return None
  return ml_collections.FrozenConfigDict(augment_config)


def _static_mixup(mixup: Mixup | None) -> Mixup | None:
  if mixup is not None and mixup.label_smoothing:
    raise ValueError(f'Mixup(label_smoothing={mixup.label_smoothing}): label smoothing belongs '
                     'to the loss (losses.make_loss_fn), build Mixup with label_smoothing=0')
  return mixup if mixup is not None and mixup.enabled else None


def jit_steps(spec: StepSpec) -> tuple[Callable, Callable]:
  """(train step, eval step) of `spec`, jitted; the train state's buffers are donated."""
  train_fn, eval_fn = ((head_train_step, head_eval_step) if spec.on_features
                       else (train_step, eval_step))
  options = compiler_options()  # XLA:CPU's faster convolution gradients (models/conv.py).
  train = jax.jit(lambda state, batch: train_fn(state, batch, spec), donate_argnums=0,
                  compiler_options=options)
  evaluate = jax.jit(lambda state, batch: eval_fn(state, batch, spec), compiler_options=options)
  return train, evaluate


def jit_preview(*, augment_config=None, mixup: Mixup | None = None) -> Callable:
  """Jitted (rng, step, uint8 images) -> uint8 images: what the train step at `step` feeds
  the model before normalisation (same augmentation, mixing and keys), for looking at."""
  augment_config, mixup = _static_augment(augment_config), _static_mixup(mixup)

  def preview(rng, step, images):
    seen, _ = augment_and_mix(rng, step, images, augment_config=augment_config, mixup=mixup)
    return jnp.clip(jnp.round(seen.astype(jnp.float32)), 0, 255).astype(jnp.uint8)

  return jax.jit(preview)
