"""`jaxcls sweep`: the command line of a sweep, grid and random (`jaxcls.launch.sweep`) or
model-based (`jaxcls.launch.optuna_search`); `jaxcls sweep --help` shows the sweep file format."""

import argparse
import sys

from jaxcls.launch import optuna_search, sweep


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='jaxcls sweep', description=sweep.__doc__.split('\n\n')[0],
                                   epilog=sweep.__doc__.split('\n\n', 1)[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', required=True,
                      help='base config, FILE or FILE:ARG (or a shipped config: default.py, ...)')
  parser.add_argument('--sweep', required=True,
                      help='sweep file, FILE or FILE:ARG (or a shipped sweep: lr_width, ...)')
  parser.add_argument('--root', required=True, help='directory of the trials\' workdirs')
  parser.add_argument('--parallel', type=int, default=1, help='trials at a time')
  parser.add_argument('--devices', default=None,
                      help='accelerator ids to divide among the parallel trials, e.g. 0,1,2,3 '
                      '(default: CUDA_VISIBLE_DEVICES or every GPU nvidia-smi lists)')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='a config override for every trial (repeatable)')
  parser.add_argument('--no_retry_failed', action='store_true',
                      help='on a re-run, leave failed trials failed')
  parser.add_argument('--dry_run', action='store_true', help='list the trials and stop')
  search = parser.add_argument_group(
      'model-based search (Optuna; jaxcls.launch.optuna_search)',
      'the same axes, trials chosen by Optuna and pruned when they fall behind; the study '
      'in ROOT/study.db, so rerunning the command resumes it')
  search.add_argument('--search', default='grid_random',
                      choices=('grid_random', *optuna_search.SEARCHES),
                      help='grid_random: every grid point x num_trials draws, no Optuna '
                      '(default); tpe, random or grid: Optuna\'s sampler')
  search.add_argument('--num_trials', type=int, default=None,
                      help='trials of an Optuna search (default: the sweep\'s num_trials, '
                      'else 10; grid: at most every combination)')
  search.add_argument('--pruner', default='median', choices=optuna_search.PRUNERS,
                      help='stops trials behind the others after an epoch (default: median)')
  search.add_argument('--metric', default=None,
                      help='validation metric Optuna optimises and prunes on (default: the '
                      'sweep\'s metric, else val_accuracy; losses are minimised)')
  search.add_argument('--startup_trials', type=int, default=2,
                      help='median pruner: trials that finish before any is pruned')
  search.add_argument('--warmup_epochs', type=int, default=1,
                      help='median pruner: epochs of each trial never pruned')
  args = parser.parse_args(argv)
  spec = sweep.load_sweep(args.sweep)
  spec['fixed'] = {**spec.get('fixed', {}), **sweep.parse_set(args.set)}
  devices = None if args.devices is None else [d for d in args.devices.split(',') if d]
  if args.search != 'grid_random':
    if args.dry_run:
      raise SystemExit('--dry_run: an Optuna search picks its trials as it runs')
    outcome = optuna_search.OptunaSweep(
        args.config, spec, args.root, search=args.search,
        num_trials=args.num_trials or int(spec.get('num_trials', 10)), pruner=args.pruner,
        metric=args.metric or spec.get('metric', 'val_accuracy'),
        startup_trials=args.startup_trials, warmup_epochs=args.warmup_epochs,
        parallel=args.parallel, devices=devices).run()
    return 1 if 'failed' in outcome.values() else 0
  try:
    trials = sweep.expand(spec)
  except ValueError as e:
    raise SystemExit(f'{args.sweep}: {e}') from e
  if args.dry_run:
    for trial in trials:
      print(trial['name'], trial['overrides'])
    return 0
  outcome = sweep.Sweep(args.config, trials, args.root, parallel=args.parallel, devices=devices,
                        retry_failed=not args.no_retry_failed).run()
  return 1 if 'failed' in outcome.values() else 0

if __name__ == '__main__':
  sys.exit(main())
