"""One workdir, one experiment, one process at a time.

`WorkdirLock` keeps a second run out of a workdir a live one is using: two
trainers in one workdir would each delete or overwrite the other's
checkpoints. The lock file names its holder (host, process id and start
time, the command), so a refusal says who has it; a holder on this host that
no longer runs leaves a stale lock, which the next run takes over with a
warning. A holder on another host cannot be checked from here: the message
says how to remove its lock.

Rerunning the same command in the same workdir resumes; rerunning with a
changed learning rate would silently mix two experiments into one set of
checkpoints and one results.json. `check_config` compares the resolved config
with the one the workdir's run saved and refuses a difference unless asked
to allow it; fields that only change how a run is evaluated, logged or fed
(not what it computes) may always change.
"""

import json
import os
import socket
import sys
import time
from pathlib import Path

import ml_collections
from absl import logging

from jaxcls.errors import ConfigError

CONFIG_FILE = 'config.json'
# May differ between the runs of one workdir: they do not change the trained model
# (model.conv_lowering changes how a convolution is computed, not which one; it is also absent
# from the workdirs of runs older than the field; so does finetune.cache_features: cached
# features train the same model).
FREE_FIELDS = ('evaluate.', 'train.log_every_steps', 'data.num_workers', 'data.num_threads',
               'data.prefetch', 'data.data_dir', 'data.download', 'model.conv_lowering',
               'finetune.cache_features', 'tracking.')
# Fields newer than some workdirs: compared only where the saved config has them, so a run
# saved before them still resumes (its data and model came from their old behaviour).
NEWER_FIELDS = ('data.interpolation', 'data.missing_test', 'model.head_zero_init',
                'model.padding', 'model.batch_norm_epsilon', 'train.max_skipped_fraction',
                'tracking.backends', 'tracking.run_name', 'tracking.mlflow_tracking_uri',
                'tracking.mlflow_experiment', 'tracking.wandb_project', 'tracking.wandb_entity',
                'optimizer.rmsprop_decay', 'optimizer.clip_grad_norm', 'optimizer.adaptive_clip',
                'train.grad_accum_steps', 'mixup.off_epoch', 'train.ema_decay',
                'train.ema_warmup', 'train.ema_select')


def _flatten(tree, prefix=''):
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = list(value) if isinstance(value, tuple) else value
  return flat


def config_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """'field: saved -> now' for every field that differs, free fields left out."""
  now = _flatten(json.loads(config.to_json_best_effort()))
  before = _flatten(saved)
  return [f'{field}: {before.get(field, "(absent)")!r} -> {now.get(field, "(absent)")!r}'
          for field in sorted(set(now) | set(before))
          if not field.startswith(FREE_FIELDS) and before.get(field) != now.get(field)
          and not (field in NEWER_FIELDS and field not in before)]


def check_config(workdir: str | Path, config: ml_collections.ConfigDict, *,
                 has_checkpoints: bool, allow_change: bool = False) -> list[str]:
  """Raises ConfigError when `workdir` holds a run of another config (see module doc);
  with `allow_change`, returns the differences ('field: before -> now') instead."""
  path = Path(workdir) / CONFIG_FILE
  if not has_checkpoints or not path.is_file():
    return []
  differences = config_differences(json.loads(path.read_text()), config)
  if differences and not allow_change:
    raise ConfigError(
        f'{workdir} holds a run with another config ({len(differences)} field(s) differ):\n  '
        + '\n  '.join(differences[:20])
        + '\nTo resume that run, rerun its own command (its config is in '
        f'{path}); to start this one, use a new --workdir; to continue it with these changes '
        'anyway, pass --allow_config_change.')
  return differences


CHANGES_FILE = 'config_changes.json'


def record_changes(workdir: str | Path, step: int, differences: list[str]) -> list[dict]:
  """Appends to WORKDIR/config_changes.json that the run went on from `step` with these
  changes (--allow_config_change), and warns; -> every change recorded so far. config.json
  then holds the new config, and results.json lists the changes, so a result never claims
  one setting for epochs run with another."""
  path = Path(workdir) / CHANGES_FILE
  changes = recorded_changes(workdir)
  if differences:
    logging.warning('%s: continuing the run from step %d with a changed config '
                    '(--allow_config_change):\n  %s', workdir, step, '\n  '.join(differences))
    changes.append(dict(from_step=step, time=time.strftime('%Y-%m-%d %H:%M:%S'),
                        changes=differences))
    path.write_text(json.dumps(changes, indent=2))
  return changes


LOCK_FILE = 'jaxcls.lock'


def _process_start(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux), to tell a live holder from a
  new process that reuses its id; None where /proc cannot say."""
  try:
    return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _holder_is_running(holder: dict) -> bool:
  try:
    os.kill(int(holder['pid']), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, KeyError, ValueError, TypeError):
    return True  # Another user's process, or a lock we cannot read: assume it is live.
  started = holder.get('process_start')
  return started is None or _process_start(int(holder['pid'])) in (None, started)


class WorkdirLock:
  """Context manager holding `workdir/jaxcls.lock` for this process (see the module doc).

  `enabled=False` (the processes of a multi-host run but the first) takes nothing: the
  run's processes share the workdir by design.
  """

  def __init__(self, workdir: str | Path, *, enabled: bool = True):
    self.path = Path(workdir) / LOCK_FILE
    self.enabled = enabled
    self._mine = dict(host=socket.gethostname(), pid=os.getpid(),
                      process_start=_process_start(os.getpid()),
                      since=time.strftime('%Y-%m-%d %H:%M:%S'), command=' '.join(sys.argv))

  def __enter__(self) -> 'WorkdirLock':
    if not self.enabled:
      return self
    for _ in range(3):  # A stale lock removed, then taken; a race with another starter lost.
      try:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        self._refuse_or_clear()
        continue
      except OSError as e:  # Read-only, not a directory, no permission: the user's to fix.
        raise ConfigError(f'cannot write to the workdir {self.path.parent}: '
                          f'{e.strerror or e}') from e
      with os.fdopen(descriptor, 'w') as f:
        json.dump(self._mine, f)
      return self
    raise ConfigError(f'{self.path.parent}: could not take its lock {self.path}')

  def _refuse_or_clear(self) -> None:
    try:
      holder = json.loads(self.path.read_text())
    except FileNotFoundError:
      return  # Released meanwhile.
    except (OSError, ValueError):
      holder = {}
    same_host = holder.get('host') == self._mine['host']
    if same_host and not _holder_is_running(holder):
      logging.warning('%s: removing the stale lock of process %s (started %s), which no longer '
                      'runs', self.path.parent, holder.get('pid'), holder.get('since'))
      self.path.unlink(missing_ok=True)
      return
    who = (f'process {holder.get("pid")} on {holder.get("host")} since {holder.get("since")} '
           f'({holder.get("command")})' if holder else f'another process ({self.path} is '
           'unreadable)')
    raise ConfigError(
        f'{self.path.parent} is in use by {who}: two runs in one workdir would overwrite each '
        f'other\'s checkpoints. Wait for it or stop it, or use another --workdir'
        + ('' if same_host else f'; if that process no longer runs, delete {self.path}') + '.')

  def __exit__(self, *exc) -> None:
    if not self.enabled:
      return
    try:
      if json.loads(self.path.read_text()).get('pid') == self._mine['pid']:
        self.path.unlink()
    except (OSError, ValueError):
      pass


def recorded_changes(workdir: str | Path) -> list[dict]:
  """The config changes `record_changes` wrote for this workdir, oldest first."""
  path = Path(workdir) / CHANGES_FILE
  return json.loads(path.read_text()) if path.is_file() else []
