"""ImageNet top-1/top-5 of pretrained weights, preprocessed as they say, on photos of known classes.

A folder with one sub-folder per ImageNet class named by its WordNet id
(Imagenette's layout) is classified by the unchanged 1000-way head; a
converted checkpoint far below its published accuracy has wrong weights or
preprocessing. `python -m jaxcls.cli.check_pretrained` is the program.
"""

import concurrent.futures
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.data.decode import IMAGE_EXTENSIONS, decode_image
from jaxcls.data.transforms import resize
from jaxcls.models.registry import create_model_with_info
from jaxcls.pretrained import imagenet, store



def list_photos(folder: str | Path, per_class: int = 0) -> tuple[list[str], np.ndarray]:
  """(files, ImageNet class indices) of FOLDER/WNID/*, the first `per_class` of each (0: all)."""
  index = {wnid: i for i, wnid in enumerate(imagenet.wnids())}
  folder = Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f'--images={folder}: not a directory')
  files, labels, unknown = [], [], []
  for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith('.')):
    if sub.name not in index:
      unknown.append(sub.name)
      continue
    chosen = sorted(str(p) for p in sub.iterdir() if p.name.lower().endswith(IMAGE_EXTENSIONS))
    chosen = chosen[:per_class] if per_class else chosen
    files += chosen
    labels += [index[sub.name]] * len(chosen)
  if unknown:
    raise ValueError(f'--images={folder}: sub-folders {unknown[:5]} are not ImageNet WordNet ids '
                     '(expected names like n01440764)')
  if not files:
    raise ValueError(f'--images={folder}: no images in its WordNet-id sub-folders')
  return files, np.asarray(labels, np.int32)


def imagenet_accuracy(pretrained: str, folder: str | Path, *, per_class: int = 0,
                      batch_size: int = 50, model_name: str | None = None,
                      mean=None, std=None, interpolation: str | None = None) -> dict:
  """Top-1/top-5 of the weights' unchanged 1000-way head on the photos under `folder`."""
  arch = store.resolve(pretrained, None if store.names_architecture(pretrained)
                       else model_name).info.arch
  model, info = create_model_with_info(arch, 1000, pretrained=pretrained)
  if info.num_classes != 1000:
    raise ValueError(f'{pretrained}: a {info.num_classes}-class head, not ImageNet-1k\'s')
  model.eval()
  mean = np.asarray(mean or info.mean, np.float32)
  std = np.asarray(std or info.std, np.float32)
  interpolation = interpolation or info.interpolation
  files, labels = list_photos(folder, per_class)
  forward = jax.jit(lambda x: model((x.astype(jnp.float32) / 255 - mean) / std))

  def load(path):
    return resize(decode_image(path), info.input_size, info.resize_size, interpolation)

  logits = []
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
    for start in range(0, len(files), batch_size):
      batch = np.stack(list(pool.map(load, files[start:start + batch_size])))
      real = len(batch)
      if real < batch_size:  # One shape, one compilation.
        batch = np.concatenate([batch, np.zeros((batch_size - real, *batch.shape[1:]), np.uint8)])
      logits.append(np.asarray(forward(batch))[:real])
  logits = np.concatenate(logits)
  top5 = np.argsort(-logits, axis=-1)[:, :5]
  correct1, correct5 = top5[:, 0] == labels, (top5 == labels[:, None]).any(axis=-1)
  names = imagenet.class_names()
  per_class_rows = {}
  for label in np.unique(labels):
    chosen = labels == label
    per_class_rows[imagenet.wnids()[label]] = dict(
        name=names[label], index=int(label), images=int(chosen.sum()),
        top1=float(correct1[chosen].mean()), top5=float(correct5[chosen].mean()))
  return dict(pretrained=pretrained, tag=info.tag, sha256=info.sha256, images=len(files),
              input_size=info.input_size, resize_size=info.resize_size,
              interpolation=interpolation, mean=mean.tolist(), std=std.tolist(),
              top1=float(correct1.mean()), top5=float(correct5.mean()), classes=per_class_rows)


def format_result(result: dict) -> str:
  lines = [f'{result["pretrained"]}: {result["images"]} photos, input {result["input_size"]} '
           f'(resize {result["resize_size"]}, {result["interpolation"]}), mean '
           f'{[round(m, 3) for m in result["mean"]]}, std {[round(s, 3) for s in result["std"]]}',
           f'{"class":<28} {"index":>5} {"images":>6} {"top-1":>6} {"top-5":>6}']
  for wnid, row in result['classes'].items():
    lines.append(f'{wnid + " " + row["name"]:<28.28} {row["index"]:>5} {row["images"]:>6} '
                 f'{row["top1"]:>6.3f} {row["top5"]:>6.3f}')
  lines.append(f'{"all (of 1000 classes)":<28} {"":>5} {result["images"]:>6} '
               f'{result["top1"]:>6.3f} {result["top5"]:>6.3f}')
  return '\n'.join(lines)
