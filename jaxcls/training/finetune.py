"""Fine-tuning strategies as data: which parameter groups train in each epoch, and how fast.

Every model names its parameter groups from input to output in
`model.group_patterns`, e.g. ResNet's stem, stage1..stage4, head: regexes over
the module path of each variable, as big_vision freezes by name pattern. A
strategy (`config.finetune`) turns the groups into a `FinetunePlan`:

  full                everything trains.
  feature_extraction  only the head trains (a linear or MLP probe).
  partial             the last `trainable_groups` groups before the head, and the head.
  gradual             an unfreeze schedule by epoch, listed or every N epochs.

What trains is stated once, as the model's group patterns and a phase's
trainable group names. From them come `Trainable`, the nnx filter by which
the train step splits the params into the part it differentiates and the
part it holds constant, and `param_labels`, the optax labels by which the
optimizer gives frozen groups `optax.set_to_zero()`: both match the same
regexes against the same paths.

Frozen groups cost no backward pass: nothing upstream of the first trainable
layer is on the gradient path, so XLA never computes it. Their BatchNorm
layers normalise with the running statistics and do not update them, and
their dropout is off, so a frozen group computes exactly the pretrained
function (`freeze_modules`). Across an unfreeze event the groups that keep
training keep their moments and newly unfrozen ones start fresh
(`optim.carry_over`).
"""

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import optax
from flax import nnx

from jaxcls.errors import ConfigError
from jaxcls.models import create_model, list_models
from jaxcls.training import optim

STRATEGIES = ('full', 'feature_extraction', 'partial', 'gradual')
HEAD = 'head'


def path_string(path: Sequence) -> str:
  """A jax key path or an nnx path tuple -> 'layer1/0/conv1/kernel'."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.GetAttrKey) and key.name == 'value':
      continue  # The array inside an nnx Variable.
    parts.append(str(getattr(key, 'key', getattr(key, 'idx', getattr(key, 'name', key)))))
  return '/'.join(parts)


def group_names(model: nnx.Module) -> tuple[str, ...]:
  """The model's parameter groups, from input to output; the last is 'head'."""
  names = tuple(name for name, _ in model.group_patterns)
  if not names or names[-1] != HEAD:
    raise ValueError(f'{type(model).__name__}.group_patterns must end with the {HEAD!r} group, '
                     f'got {names}')
  return names


GroupPatterns = tuple[tuple[str, str], ...]  # (group, regex over module paths), input first.


def _patterns(model_or_patterns) -> GroupPatterns:
  patterns = getattr(model_or_patterns, 'group_patterns', model_or_patterns)
  return tuple((name, pattern) for name, pattern in patterns)


def group_of(model_or_patterns, path: str) -> str | None:
  """The group of the module or variable at `path` ('layer4/1/bn2/scale'), None if none."""
  for name, pattern in _patterns(model_or_patterns):
    if re.match(pattern, path):
      return name
  return None


@dataclasses.dataclass(frozen=True)
class Trainable:
  """An nnx filter, `(path, value) -> bool`: is the parameter at `path` in a trainable group?"""
  group_patterns: GroupPatterns
  groups: tuple[str, ...]

  def __call__(self, path, value) -> bool:
    del value
    return group_of(self.group_patterns, path_string(path)) in self.groups


def param_labels(model_or_patterns, params: nnx.State) -> nnx.State:
  """A tree like `params` holding each parameter's group name (optax's labels)."""
  patterns = _patterns(model_or_patterns)

  def label(path, _):
    name = group_of(patterns, path_string(path))
    if name is None:
      raise ValueError(f'parameter {path_string(path)!r} matches none of the group_patterns '
                       f'{patterns}')
    return name

  return jax.tree_util.tree_map_with_path(label, params)


def freeze_modules(model: nnx.Module, frozen: Sequence[str]) -> None:
  """Puts the modules of the `frozen` groups in inference mode, in place.

  Only the modules matched to a frozen group change, not their parents, so a
  container that spans groups (VGG's `features`) keeps its trainable parts in
  training mode.
  """
  frozen = set(frozen)
  for path, module in nnx.iter_modules(model):
    if group_of(model, path_string(path)) in frozen:
      if hasattr(module, 'use_running_average'):
        module.use_running_average = True
      if hasattr(module, 'deterministic'):
        module.deterministic = True


@dataclasses.dataclass(frozen=True)
class FinetunePlan:
  """The trainable groups of every epoch and the learning-rate multiplier of each group."""
  groups: tuple[str, ...]
  # (first epoch, trainable groups from then on), sorted by epoch, first at epoch 0.
  phases: tuple[tuple[int, tuple[str, ...]], ...]
  lr_multipliers: Mapping[str, float]

  def trainable_at(self, epoch: int) -> tuple[str, ...]:
    current = self.phases[0][1]
    for start, trainable in self.phases:
      if start <= epoch:
        current = trainable
    return current

  def frozen_at(self, epoch: int) -> tuple[str, ...]:
    trainable = self.trainable_at(epoch)
    return tuple(g for g in self.groups if g not in trainable)


def _config_error(field: str, value, why: str) -> ValueError:
  return ConfigError(f'config.finetune.{field}={value!r}: {why}')


def parse_unfreeze_schedule(text: str, groups: Sequence[str]) -> dict[int, tuple[str, ...]]:
  """'0:head 3:stage4 6:stage3,stage2' -> {0: ('head',), 3: ('stage4',), 6: ('stage3', 'stage2')}."""
  schedule = {}
  for entry in text.replace(';', ' ').split():
    epoch, sep, names = entry.partition(':')
    if not sep or not epoch.strip().isdigit():
      raise _config_error('unfreeze_schedule', text,
                          f'{entry!r} is not EPOCH:GROUP[,GROUP...], e.g. "0:head 3:stage4"')
    unknown = [n for n in names.split(',') if n not in groups]
    if unknown or not names:
      raise _config_error('unfreeze_schedule', text,
                          f'unknown group(s) {unknown or [names]}; this model has {list(groups)}')
    schedule.setdefault(int(epoch), ())
    schedule[int(epoch)] += tuple(names.split(','))
  return schedule


def parse_lr_multipliers(text: str, groups: Sequence[str]) -> dict[str, float]:
  """'stem:0.1 head:10' -> {'stem': 0.1, 'head': 10.0}."""
  multipliers = {}
  for entry in text.replace(',', ' ').split():
    name, sep, value = entry.partition(':')
    try:
      multipliers[name] = float(value)
    except ValueError:
      raise _config_error('lr_multipliers', text,
                          f'{entry!r} is not GROUP:MULTIPLIER, e.g. "stem:0.1 head:10"') from None
    if not sep or name not in groups:
      raise _config_error('lr_multipliers', text,
                          f'unknown group {name!r}; this model has {list(groups)}')
    if multipliers[name] < 0:
      raise _config_error('lr_multipliers', text, f'{name}: a multiplier must be >= 0')
  return multipliers


def plan_from_config(finetune: ml_collections.ConfigDict, groups: Sequence[str],
                     num_epochs: int, tied_groups: Mapping[str, str] | None = None
                     ) -> FinetunePlan:
  """`config.finetune` and the model's groups -> the plan; errors name the bad field.

  `tied_groups` (the model's, `Classifier.tied_groups`) train whenever the
  group they are tied to does (GoogLeNet's auxiliary heads with inception4):
  strategies count groups without them (`partial`'s K, `unfreeze_every`'s
  steps, `layer_decay`'s depths, where a tied group takes its anchor's rate),
  and a schedule may still name them.
  """
  all_groups, tied = tuple(groups), dict(tied_groups or {})
  groups = tuple(g for g in all_groups if g not in tied)
  strategy = finetune.strategy
  if strategy == 'full':
    phases = ((0, groups),)
  elif strategy == 'feature_extraction':
    phases = ((0, (HEAD,)),)
  elif strategy == 'partial':
    k = finetune.trainable_groups
    if not 0 <= k < len(groups):
      raise _config_error('trainable_groups', k,
                          f'partial trains the last K groups before the head and the head; '
                          f'this model has {len(groups) - 1} such groups {list(groups[:-1])}')
    phases = ((0, groups[len(groups) - 1 - k:]),)
  elif strategy == 'gradual':
    phases = _gradual_phases(finetune, groups, num_epochs, all_groups)
  else:
    raise _config_error('strategy', strategy, f'expected one of {STRATEGIES}')
  multipliers = {g: 1.0 for g in all_groups}
  decay = finetune.layer_decay
  if decay:
    if not 0 < decay <= 1:
      raise _config_error('layer_decay', decay, 'expected a factor in (0, 1], 0 for off')
    # timm's layer-wise decay: the head at the full rate, each group before it `decay` times less.
    for depth, name in enumerate(reversed(groups)):
      multipliers[name] = decay**depth
    multipliers.update({name: multipliers[anchor] for name, anchor in tied.items()})
  for name, value in parse_lr_multipliers(finetune.lr_multipliers, all_groups).items():
    multipliers[name] *= value
  phases = tuple((epoch, tuple(g for g in all_groups
                               if g in trainable or tied.get(g) in trainable))
                 for epoch, trainable in phases)
  return FinetunePlan(groups=all_groups, phases=phases, lr_multipliers=multipliers)


def _gradual_phases(finetune, groups, num_epochs, all_groups):
  if finetune.unfreeze_schedule and finetune.unfreeze_every:
    raise _config_error('unfreeze_every', finetune.unfreeze_every,
                        'give unfreeze_schedule or unfreeze_every, not both')
  if finetune.unfreeze_schedule:
    schedule = parse_unfreeze_schedule(finetune.unfreeze_schedule, all_groups)
    if 0 not in schedule:
      raise _config_error('unfreeze_schedule', finetune.unfreeze_schedule,
                          'say what trains from epoch 0, e.g. "0:head 3:stage4"')
  elif finetune.unfreeze_every > 0:
    # The head first, then one more group from the output side every N epochs.
    schedule = {i * finetune.unfreeze_every: (name,)
                for i, name in enumerate(reversed(groups))}
  else:
    raise _config_error('unfreeze_every', finetune.unfreeze_every,
                        'gradual needs unfreeze_schedule ("0:head 3:stage4") or unfreeze_every > 0')
  phases, trainable = [], ()
  for epoch in sorted(schedule):
    trainable = tuple(g for g in all_groups if g in trainable or g in schedule[epoch])
    if epoch < num_epochs or not phases:
      phases.append((epoch, trainable))
  return tuple(phases)


@dataclasses.dataclass(frozen=True)
class Phase:
  """What the train step of one fine-tuning phase is built from (all static under jit)."""
  trainable: Trainable
  tx: optax.GradientTransformation
  graphdef: nnx.GraphDef  # The training graph, frozen groups in inference mode.


def enter_phase(state, trainable: Sequence[str], *, plan: FinetunePlan,
                group_patterns: GroupPatterns, train_graph: nnx.GraphDef,
                optimizer: Callable[[Sequence[str]], Any], previous: Phase | None = None):
  """-> (state, Phase) for training the `trainable` groups from here on.

  `optimizer(trainable)` builds the phase's optax transformation. Coming from
  a `previous` phase, the optimizer state is rebuilt for the new groups
  (`optim.carry_over`). Without `previous`, `state.opt_state` must already
  fit `optimizer(trainable)` (a new or restored state).
  """
  trainable = tuple(trainable)
  tx = optimizer(trainable)
  if previous is not None:
    opt_state = optim.carry_over(tx.init(state.params), state.opt_state,
                                 set(previous.trainable.groups) & set(trainable))
    # Same placement as the state it joins (replicated across the mesh).
    sharding = jax.tree.leaves(state.params)[0].sharding
    state = state.replace(opt_state=jax.device_put(opt_state, sharding))
  frozen = tuple(g for g in plan.groups if g not in trainable)
  graphdef = phase_graphdef(train_graph, state.params, state.model_state, frozen)
  return state, Phase(trainable=Trainable(_patterns(group_patterns), trainable), tx=tx,
                      graphdef=graphdef)


def phase_graphdef(train_graph: nnx.GraphDef, params: nnx.State, model_state: nnx.State,
                   frozen: Sequence[str]) -> nnx.GraphDef:
  """The training graph with the `frozen` groups' modules in inference mode."""
  if not frozen:
    return train_graph
  model = nnx.merge(train_graph, params, model_state)
  freeze_modules(model, frozen)
  return nnx.split(model, nnx.Param, ...)[0]


def config_errors(finetune_config: ml_collections.ConfigDict,
                  model_config: ml_collections.ConfigDict, num_epochs: int) -> list[str]:
  """What is wrong with `config.finetune`: its plan against the model's own parameter groups.

  The model is built abstractly (`nnx.eval_shape`: no weights). A model that cannot be built
  at all has nothing to check against (`config.model`'s checks say why).
  """
  if model_config.name not in list_models() or model_config.width < 0:
    return []
  kwargs = {'width': model_config.width} if model_config.width else {}
  if model_config.get('aux_logits'):
    kwargs['aux_logits'] = True
  try:
    model = nnx.eval_shape(lambda: create_model(model_config.name, 2, **kwargs))
  except (TypeError, ValueError):
    return []  # A constructor argument the model does not take: config.model's checks say so.
  try:
    plan_from_config(finetune_config, group_names(model), num_epochs, model.tied_groups)
  except ConfigError as e:
    return [str(e)]
  return []
