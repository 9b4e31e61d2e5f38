"""One table of every trial of a sweep, sorted by a metric, and a figure of their validation curves.

    jaxcls summarize ROOT [--metric val_accuracy] [--mode max]

Writes ROOT/summary.md, ROOT/summary.csv and ROOT/val_curves.png and prints
the markdown. Columns: the swept values, status, best validation metric and its
epoch, test metrics (of the best checkpoint), the train-val gap (train minus
val accuracy at the best epoch), epochs done, wall time and train images/s.
With a `data.fold` axis (k-fold), a second table gives mean +- std over the
folds of each configuration.

Works while the sweep runs: a finished trial is read from its results.json, a
running one from its latest checkpoint's meta (the per-epoch history) and its
trial.json, a failed one shows its status and the last line of its log, a pruned one
(Optuna) the epochs it ran. An Optuna search (ROOT/study.db) adds its trials by state and
its best trial's parameters.
"""

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

from jaxcls.launch import optuna_search
from jaxcls.launch import sweep as sweep_lib

FOLD_FIELD = 'data.fold'
LOWER_IS_BETTER = ('loss', 'gap', 'seconds')


def _latest_meta(workdir: Path) -> dict | None:
  """The meta (epoch, history) of the newest checkpoint that finished writing."""
  checkpoints = workdir / 'checkpoints'
  steps = sorted((int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()),
                 reverse=True) if checkpoints.is_dir() else []
  for step in steps:
    try:
      return json.loads((checkpoints / str(step) / 'meta' / 'metadata').read_text())
    except (OSError, ValueError):
      continue
  return None


def _alive(pid) -> bool:
  if not pid:
    return True  # Starting: no process id yet.
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  return True


def _train_accuracy(train: dict) -> float | None:
  return train.get('accuracy', train.get('accuracy_vs_dominant_label'))


def trial_row(workdir: Path, values: dict, best_metric: str = 'accuracy',
              best_mode: str = 'max') -> dict:
  """The table row of one trial directory, whatever state it is in."""
  trial = sweep_lib.read_trial(workdir)
  row = dict(values)
  row['trial'] = workdir.name
  results = None
  if (workdir / 'results.json').is_file():
    try:
      results = json.loads((workdir / 'results.json').read_text())
    except ValueError:
      results = None
  if results is not None:
    row['status'] = 'finished'
    history = results['history']
    best_metric = results['config']['checkpoint']['best_metric']
    best = next((h for h in history if h['epoch'] == results['best_epoch']), history[-1])
    row[f'val_{best_metric}'] = results['best_val'][best_metric]
    for name, value in results['best_val'].items():
      row.setdefault(f'val_{name}', value)
    row['best_epoch'] = results['best_epoch']
    row.update({f'test_{k}': v for k, v in results['test'].items()})
    timings = results.get('timings', {})
    row['images_per_s'] = timings.get('train_images_per_second')
    row['seconds'] = trial.get('seconds') or timings.get('total_seconds')
  else:
    status = trial.get('status', 'pending')
    meta = _latest_meta(workdir)
    history = meta['history'] if meta else []
    if status == 'running' and not _alive(trial.get('pid')):
      status = 'stopped'  # Its sweep was killed; a re-run resumes it.
    row['status'] = status
    if history:
      pick = max if best_mode == 'max' else min
      best = pick(history, key=lambda h: h['val'][best_metric])
      row.update({f'val_{k}': v for k, v in best['val'].items()})
      row['best_epoch'] = best['epoch']
    else:
      best = None
    if status == 'running' and trial.get('started'):
      row['seconds'] = time.time() - trial['started']
    elif trial.get('seconds'):
      row['seconds'] = trial['seconds']
    if status == 'failed':
      tail = trial.get('log_tail') or ''
      row['error'] = next((l for l in reversed(tail.splitlines()) if l.strip()), '')[:160]
  row['epochs'] = len(history)
  if best is not None:
    train_acc = _train_accuracy(best['train'])
    if train_acc is not None and 'accuracy' in best['val']:
      row['gap'] = train_acc - best['val']['accuracy']
  row['_history'] = history
  return row


def collect(root: Path) -> tuple[list[dict], list[str]]:
  """(rows, swept fields) of every trial under `root`, in the sweep's order."""
  root = Path(root)
  record_path = root / sweep_lib.SWEEP_JSON
  if record_path.is_file():
    trials = json.loads(record_path.read_text())['trials']
  else:  # Trials without a sweep record: every directory with a trial.json or results.json.
    trials = [dict(name=p.name, values=sweep_lib.read_trial(p).get('values', {}))
              for p in sorted(root.iterdir())
              if (p / sweep_lib.TRIAL_JSON).is_file() or (p / 'results.json').is_file()]
  fields = []
  for trial in trials:
    fields += [f for f in trial['values'] if f not in fields]
  rows = [trial_row(root / t['name'], t['values']) for t in trials]
  return rows, fields


def sort_rows(rows: list[dict], metric: str, mode: str | None = None) -> list[dict]:
  """Best first by `metric`; rows without it (running, failed) last, in their order."""
  mode = mode or ('min' if any(w in metric for w in LOWER_IS_BETTER) else 'max')
  have = [r for r in rows if isinstance(r.get(metric), (int, float))]
  rest = [r for r in rows if not isinstance(r.get(metric), (int, float))]
  return sorted(have, key=lambda r: r[metric], reverse=mode == 'max') + rest


def _columns(rows: list[dict], fields: list[str]) -> list[str]:
  present = set().union(*(r.keys() for r in rows)) if rows else set()
  metrics = ['val_accuracy', 'val_loss', 'best_epoch', 'test_accuracy', 'test_loss',
             'test_top5_accuracy', 'gap', 'epochs', 'seconds', 'images_per_s']
  extra = sorted(k for k in present if k.startswith(('val_', 'test_')) and k not in metrics)
  return (['trial'] + [f for f in fields if f != 'trial'] + ['status'] +
          [m for m in metrics + extra if m in present] + (['error'] if 'error' in present else []))


def _format(value) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    if math.isnan(value):
      return 'nan'
    return f'{value:.4f}' if abs(value) < 1000 else f'{value:.0f}'
  return str(value)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
  header = [c.rsplit('.', 1)[-1] if '.' in c else c for c in columns]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(columns)]
  for row in rows:
    lines.append('| ' + ' | '.join(_format(row.get(c)).replace('|', '/') for c in columns) + ' |')
  return '\n'.join(lines)


def fold_table(rows: list[dict], fields: list[str]) -> tuple[list[dict], list[str]]:
  """k-fold: one row per configuration (all swept values but the fold) with mean +- std."""
  group_fields = [f for f in fields if f != FOLD_FIELD]
  metrics = [m for m in ('val_accuracy', 'val_loss', 'test_accuracy', 'test_loss', 'gap')
             if any(m in r for r in rows)]
  groups = {}
  for row in rows:
    groups.setdefault(tuple(repr(row.get(f)) for f in group_fields), []).append(row)
  table = []
  for members in groups.values():
    finished = [r for r in members if r.get('status') == 'finished']
    entry = {f: members[0].get(f) for f in group_fields}
    entry['folds'] = f'{len(finished)}/{len(members)}'
    for m in metrics:
      values = [r[m] for r in finished if isinstance(r.get(m), (int, float))]
      if values:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        entry[m] = f'{statistics.fmean(values):.4f} ± {std:.4f}'
        entry[f'_{m}'] = statistics.fmean(values)
    table.append(entry)
  return table, group_fields + ['folds'] + metrics


def plot_curves(rows: list[dict], path: Path, metric: str = 'accuracy') -> bool:
  """Validation `metric` and loss per epoch of every trial with a history."""
  with_history = [r for r in rows if r['_history']]
  if not with_history:
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for row in with_history:
    epochs = [h['epoch'] for h in row['_history']]
    style = {'finished': '-', 'pruned': ':'}.get(row['status'], '--')
    for ax, name in zip(axes, (metric, 'loss')):
      ax.plot(epochs, [h['val'].get(name, float('nan')) for h in row['_history']], style,
              marker='o', markersize=3, label=row['trial'])
  for ax, name in zip(axes, (metric, 'loss')):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel('epoch')
    ax.set_ylabel(f'val {name}')
    ax.grid(alpha=0.3)
  axes[1].set_yscale('log')  # A first epoch's loss can be 100x the rest (BatchNorm settling).
  axes[1].legend(fontsize=7, loc='upper right', ncol=1 + len(with_history) // 12)
  fig.suptitle('validation curves (dotted: pruned, dashed: unfinished)')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def summarize(root: str | Path, metric: str = 'val_accuracy', mode: str | None = None,
              write: bool = True) -> dict:
  """Builds the tables (and files); returns {'rows', 'columns', 'markdown', ...}."""
  root = Path(root)
  rows, fields = collect(root)
  rows = sort_rows(rows, metric, mode)
  columns = _columns(rows, fields)
  counts = {s: sum(r['status'] == s for r in rows) for s in
            ('finished', 'pruned', 'running', 'failed', 'stopped', 'pending', 'interrupted')}
  markdown = (f'## {root}\n\n{len(rows)} trials: ' +
              ', '.join(f'{n} {s}' for s, n in counts.items() if n) +
              f'; sorted by {metric}\n\n' + markdown_table(rows, columns) + '\n')
  folds = None
  if FOLD_FIELD in fields:
    folds, fold_columns = fold_table(rows, fields)
    folds = sort_rows(folds, f'_{metric}', mode)
    markdown += ('\n### k-fold: mean ± std over folds\n\n' +
                 markdown_table(folds, fold_columns) + '\n')
  study = optuna_search.study_summary(root, metric)  # An Optuna search: its best parameters.
  if study:
    markdown += '\n' + study
  result = dict(rows=rows, columns=columns, fields=fields, markdown=markdown, folds=folds)
  if write:
    (root / 'summary.md').write_text(markdown)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
    (root / 'summary.csv').write_text(buffer.getvalue())
    if plot_curves(rows, root / 'val_curves.png', metric.removeprefix('val_').removeprefix(
        'test_') if metric.startswith(('val_', 'test_')) else 'accuracy'):
      result['figure'] = root / 'val_curves.png'
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='jaxcls summarize', description=__doc__.split('\n\n')[0])
  parser.add_argument('root', help='a sweep\'s --root')
  parser.add_argument('--metric', default='val_accuracy',
                      help='column to sort by: val_accuracy, val_loss, test_accuracy, gap, ...')
  parser.add_argument('--mode', choices=('max', 'min'), default=None,
                      help='best is the largest or smallest (default: min for losses)')
  args = parser.parse_args(argv)
  if not Path(args.root).is_dir():
    raise SystemExit(f'{args.root}: no such directory')
  result = summarize(args.root, args.metric, args.mode)
  print(result['markdown'])
  print(f'-> {args.root}/summary.md, summary.csv' +
        (', val_curves.png' if 'figure' in result else ''))
  return 0


if __name__ == '__main__':
  sys.exit(main())
