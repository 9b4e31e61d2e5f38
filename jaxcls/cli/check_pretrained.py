"""Checks ImageNet weights and their preprocessing on photos of known ImageNet classes.

    python -m jaxcls.cli.check_pretrained --pretrained efficientnet_lite0.tf_in1k \
        --images ../shared/data/imagenette2-224-val/val [--per_class 50] [--mean imagenet]

`--images` is a folder with one sub-folder per ImageNet class, named by its
WordNet id (Imagenette's layout: n01440764/, n02102040/, ...). The unchanged
1000-way head classifies every photo, preprocessed as the weights say (input
size, resize, interpolation, mean, std; `--mean`, `--std`, `--interpolation`
override one to see what a wrong one costs), and the top-1/top-5 accuracy over
all 1000 classes is printed per class and overall. A converted checkpoint whose
accuracy is far below its published figure has wrong weights or preprocessing.
"""

import argparse
import json
import sys
from pathlib import Path

from jaxcls.pretrained import registry
from jaxcls.evaluation.pretrained_check import format_result, imagenet_accuracy

_NAMED_MEANS = {'imagenet': (registry.IMAGENET_MEAN, registry.IMAGENET_STD),
                'lite': (registry.LITE_MEAN, registry.LITE_STD), 'half': ((0.5,) * 3, (0.5,) * 3)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='jaxcls check-pretrained',
                                   description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split('\n\n', 1)[1])
  parser.add_argument('--pretrained', required=True, help='a tag, hf-hub:REPO, directory or file')
  parser.add_argument('--model', default=None, help='the architecture of a raw checkpoint file')
  parser.add_argument('--images', required=True, help='FOLDER/WNID/*.jpg')
  parser.add_argument('--per_class', type=int, default=0, help='photos per class (0: all)')
  parser.add_argument('--batch_size', type=int, default=50)
  parser.add_argument('--mean', default=None, help=f'override: {", ".join(_NAMED_MEANS)} '
                      '(mean and std together) or three numbers in [0, 1]')
  parser.add_argument('--std', default=None, help='override: three numbers in [0, 1]')
  parser.add_argument('--interpolation', choices=registry.INTERPOLATIONS, default=None)
  parser.add_argument('--out', default=None, help='also write the result as JSON here')
  args = parser.parse_args(argv)
  mean = std = None
  if args.mean in _NAMED_MEANS:
    mean, std = _NAMED_MEANS[args.mean]
  elif args.mean:
    mean = tuple(float(v) for v in args.mean.split(','))
  if args.std:
    std = tuple(float(v) for v in args.std.split(','))
  try:
    result = imagenet_accuracy(args.pretrained, args.images, per_class=args.per_class,
                               batch_size=args.batch_size, model_name=args.model, mean=mean,
                               std=std, interpolation=args.interpolation)
  except (KeyError, FileNotFoundError, ValueError, RuntimeError) as e:
    print(f'jaxcls check_pretrained: {e.args[0] if isinstance(e, KeyError) else e}',
          file=sys.stderr)
    return 1
  print(format_result(result))
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=2))
  return 0


if __name__ == '__main__':
  sys.exit(main())
