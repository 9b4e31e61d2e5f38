"""Lists the architectures and the pretrained tags, and fetches a tag's weights ahead of time.

    python -m jaxcls.cli.models                       # architectures, with their tags
    python -m jaxcls.cli.models --pretrained          # every tag: input, crop, interpolation, source
    python -m jaxcls.cli.models --pretrained lite     # ... whose name contains 'lite'
    python -m jaxcls.cli.models --fetch resnet50.tv_in1k   # download into the cache now
"""

import argparse
import sys

from jaxcls.models import list_models
from jaxcls.pretrained import registry
from jaxcls.pretrained import store


def _table(rows: list[list[str]]) -> str:
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  return '\n'.join('  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                   for row in rows)


def pretrained_table(contains: str = '') -> str:
  rows = [['tag', 'input', 'crop', 'interpolation', 'mean', 'source']]
  for name in registry.list_pretrained():
    if contains not in name:
      continue
    cfg = registry.get_pretrained(name)
    mean = 'imagenet' if cfg.mean == registry.IMAGENET_MEAN else ','.join(
        f'{m:.3f}' for m in cfg.mean)
    rows.append([name, str(cfg.input_size), f'{cfg.crop_pct:.3f}', cfg.interpolation, mean,
                 cfg.source.describe()])
  return _table(rows)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='jaxcls models',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--pretrained', nargs='?', const='', default=None, metavar='FILTER',
                      help='list the pretrained tags (whose name contains FILTER)')
  parser.add_argument('--fetch', metavar='TAG', help="download a tag's weights into the cache")
  args = parser.parse_args(argv)
  if args.fetch:
    try:
      weights = store.resolve(args.fetch)
    except (KeyError, FileNotFoundError, store.PretrainedSourceError) as e:
      print(f'jaxcls models: {e.args[0] if isinstance(e, KeyError) else e}', file=sys.stderr)
      return 1
    print(f'{args.fetch}: {weights.path} (sha256 {weights.info.sha256})')
    return 0
  if args.pretrained is not None:
    print(pretrained_table(args.pretrained))
    return 0
  rows = [['model', 'pretrained tags (the first is the default)']]
  for name in list_models():
    tags = [t.split('.', 1)[1] for t in registry.list_pretrained(name)]
    rows.append([name, ', '.join(tags) or '-'])
  print(_table(rows))
  return 0


if __name__ == '__main__':
  sys.exit(main())
