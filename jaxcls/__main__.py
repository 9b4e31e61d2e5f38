"""`jaxcls COMMAND [ARGS]`: one entry point for every program of the package, installed by
`pip install jaxcls` (also `python -m jaxcls COMMAND`). Each command is a module run as its own
`python -m MODULE ARGS`, so its flags, help and exit status are that module's own; `python -m
jaxcls.main --config ...` stays the Flax-style way to train.
"""

import pkgutil
import runpy
import sys

from jaxcls.launch import ablations

# name: (module, what it does). Modules are imported only when their command runs.
COMMANDS = {
    'train': ('jaxcls.cli.train', 'train a config in a workdir, test it, write its report '
              '(= python -m jaxcls.main)'),
    'lr-find': ('jaxcls.cli.lr_find', 'learning-rate range test of a config: a plot and a '
                'suggested rate'),
    'evaluate': ('jaxcls.cli.evaluate', "a finished run's report again, on any split or step"),
    'predict': ('jaxcls.cli.predict', 'classify image files or folders with a trained run'),
    'explain': ('jaxcls.cli.explain', "Grad-CAM: where a trained run's model looks"),
    'export': ('jaxcls.cli.export', "a trained run as ONNX, a TF SavedModel or TFLite, checked "
               'against JAX'),
    'convert': ('jaxcls.cli.convert', 'PyTorch/timm weights -> a jaxcls checkpoint'),
    'models': ('jaxcls.cli.models', 'the architectures and the pretrained tags'),
    'check-pretrained': ('jaxcls.cli.check_pretrained',
                         'ImageNet accuracy of pretrained weights on a labelled folder'),
    'sweep': ('jaxcls.launch.sweep_command', 'many trainings of one config: grid, random or Optuna'),
    'summarize': ('jaxcls.launch.summarize', "one table and figure of a sweep's trials"),
    'ablate': ('jaxcls.launch.ablations', 'run an ablation suite: jaxcls ablate SUITE --help'),
    'bench': ('jaxcls.launch.bench', 'throughput of the train step and the input pipelines'),
}


def suites() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(ablations.__path__) if m.name != 'common')


def usage() -> str:
  width = max(map(len, COMMANDS))
  lines = ['jaxcls: fine-tune and train image classifiers in JAX/Flax, compare them, '
           'explain them.', '',
           'usage: jaxcls COMMAND [ARGS]   (jaxcls COMMAND --help for its flags)', '',
           'commands:']
  lines += [f'  {name:<{width}}  {text}' for name, (_, text) in COMMANDS.items()]
  lines += ['', f'ablation suites: {", ".join(suites())}',
            'configs: a file, or a shipped config by name (default.py, finetune_photos.py:full, '
            '...: jaxcls/configs)']
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ('-h', '--help', 'help'):
    print(usage())
    sys.exit(0 if argv else 2)
  if argv[0].startswith('--'):  # `jaxcls --config ... --workdir ...`: train, as before.
    argv.insert(0, 'train')
  command, args = argv[0], argv[1:]
  if command not in COMMANDS:
    sys.exit(f'jaxcls: unknown command {command!r}; one of {", ".join(COMMANDS)}')
  module = COMMANDS[command][0]
  if command == 'ablate':
    if not args or args[0] in ('-h', '--help'):
      print(f'usage: jaxcls ablate SUITE [FLAGS]   (jaxcls ablate SUITE --help)\n\n'
            f'suites: {", ".join(suites())}')
      sys.exit(0 if args else 2)
    if args[0] not in suites():
      sys.exit(f'jaxcls ablate: unknown suite {args[0]!r}; one of {", ".join(suites())}')
    module, command, args = f'{module}.{args[0]}', f'ablate {args[0]}', args[1:]
  sys.argv = [f'jaxcls {command}', *args]
  # alter_sys: the module is __main__ while it runs, so absl's --help shows its own docstring.
  runpy.run_module(module, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
