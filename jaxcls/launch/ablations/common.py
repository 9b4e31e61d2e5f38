"""What every ablation suite shares: its command line, running the sweep(s), the table.

A suite is a module with a docstring, `BASE` (its base config, FILE or
FILE:ARG), `sweeps(args) -> {name: sweep dict}` and optionally `add_flags(parser)`.
Each named sweep runs under ROOT/NAME (or ROOT itself when there is one) with
`jaxcls sweep`'s machinery, then `jaxcls summarize` writes its table. A suite runs as
`jaxcls ablate SUITE ...` (or `python -m jaxcls.launch.ablations.SUITE`); BASE is a shipped
config (jaxcls/configs), found wherever jaxcls is installed.
"""

import argparse
from pathlib import Path

from jaxcls.launch import summarize, sweep


def parser_for(doc: str, default_root: str, name: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=f'jaxcls ablate {name}', description=doc.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=doc.split('\n\n', 1)[-1])
  parser.add_argument('--root', default=default_root, help='where the trials go')
  parser.add_argument('--dataset', default=None,
                      help="config.data.source: 'digits' (default: the base config's), "
                      "'tfds:NAME' or 'folder:PATH'")
  parser.add_argument('--epochs', type=int, default=None, help='train.num_epochs of every trial')
  parser.add_argument('--parallel', type=int, default=1, help='trials at a time')
  parser.add_argument('--metric', default='val_accuracy', help='column to sort the table by')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='a config override for every trial (repeatable)')
  return parser


def fixed_overrides(args) -> dict:
  fixed = sweep.parse_set(args.set)
  if args.dataset:
    fixed['data.source'] = args.dataset
  if args.epochs:
    fixed['train.num_epochs'] = args.epochs
    fixed.setdefault('optimizer.warmup_epochs', min(1.0, args.epochs / 4))
  return fixed


def run_suite(doc: str, name: str, base: str, sweeps, add_flags=None, argv=None) -> int:
  """Parses the command line, runs each sweep, prints and writes each table."""
  parser = parser_for(doc, f'runs/ablations/{name}', name)
  if add_flags is not None:
    add_flags(parser)
  args = parser.parse_args(argv)
  named = sweeps(args)
  fixed = fixed_overrides(args)
  failed = False
  tables = []
  for sweep_name, spec in named.items():
    root = Path(args.root) / sweep_name if len(named) > 1 else Path(args.root)
    print(f'[{name}] {sweep_name}: {len(sweep.expand(spec))} trials under {root}', flush=True)
    outcome = sweep.run_sweep(base,
                              spec, root, parallel=args.parallel, fixed=fixed)
    failed |= 'failed' in outcome.values()
    result = summarize.summarize(root, args.metric)
    tables.append(result['markdown'])
    best = next((r for r in result['rows'] if isinstance(r.get(args.metric), float)), None)
    if best is not None and len(named) > 1:
      tables.append(f'Best of {sweep_name}: {best["trial"]}, {args.metric} '
                    f'{best[args.metric]:.4f}\n')
  report = f'# {name}\n\n' + '\n'.join(tables)
  Path(args.root).mkdir(parents=True, exist_ok=True)
  (Path(args.root) / f'{name}.md').write_text(report)
  print(report)
  return 1 if failed else 0
