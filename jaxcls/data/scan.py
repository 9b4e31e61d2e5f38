"""One up-front pass over an image folder: what decodes, what does not, what repeats.

Real folders hold truncated JPEGs, files that are not images, zero-byte files
and the same photo saved in two splits. Finding that out in a Grain worker
mid-epoch costs a run; finding it here costs one decode per file, once: the
results are cached in WORKDIR/data_scan.json by path, size and modification
time, so a rerun (or a resumed run) decodes only new or changed files.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from absl import logging
from PIL import Image

from jaxcls.data.decode import decode_image

CACHE_FILE = 'data_scan.json'
REPORT_EVERY_SECONDS = 10.0  # A progress line this often while a large folder is scanned.


@dataclasses.dataclass(frozen=True)
class FileCheck:
  size: int
  mtime_ns: int
  sha1: str
  error: str | None  # Why the file cannot be used; None when it decodes.


def _check(path: str) -> FileCheck:
  stat = os.stat(path)
  with open(path, 'rb') as f:
    sha1 = hashlib.sha1(f.read()).hexdigest()
  error = None
  if stat.st_size == 0:
    error = 'empty file (0 bytes)'
  else:
    try:
      with warnings.catch_warnings():
        warnings.simplefilter('error', Image.DecompressionBombWarning)
        image = decode_image(path)
      if image.size == 0:
        error = 'image has no pixels'
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
      error = f'too large to decode safely: {e}'
    except Exception as e:  # pylint: disable=broad-except
      error = f'cannot decode: {type(e).__name__}: {e}'
  return FileCheck(size=stat.st_size, mtime_ns=stat.st_mtime_ns, sha1=sha1, error=error)


def scan_files(paths: Sequence[str], cache_dir: str | Path | None = None,
               num_threads: int = 8) -> dict[str, FileCheck]:
  """{path: FileCheck} for every path, decoding only what the cache does not vouch for."""
  cache_path = Path(cache_dir) / CACHE_FILE if cache_dir else None
  cached = {}
  if cache_path is not None and cache_path.is_file():
    try:
      cached = {p: FileCheck(**c) for p, c in json.loads(cache_path.read_text()).items()}
    except (ValueError, TypeError):
      cached = {}  # A damaged cache is rebuilt, not trusted.
  results, todo = {}, []
  for path in paths:
    entry = cached.get(path)
    try:
      stat = os.stat(path)
    except OSError as e:
      results[path] = FileCheck(size=0, mtime_ns=0, sha1='', error=f'cannot read: {e}')
      continue
    if entry and entry.size == stat.st_size and entry.mtime_ns == stat.st_mtime_ns:
      results[path] = entry
    else:
      todo.append(path)
  started = last_report = time.monotonic()
  if todo:
    logging.info('scanning %d image files (%d checked before, cached in %s)', len(todo),
                 len(results), cache_path or 'no cache')
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    for done, (path, check) in enumerate(zip(todo, pool.map(_check, todo)), start=1):
      results[path] = check
      if time.monotonic() - last_report >= REPORT_EVERY_SECONDS and done < len(todo):
        last_report = time.monotonic()
        logging.info('scanned %d of %d files (%.0f files/s)', done, len(todo),
                     done / (last_report - started))
  if todo:
    logging.info('scanned %d files in %.1f s', len(todo), time.monotonic() - started)
  if cache_path is not None and todo:
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_suffix(f'.tmp{os.getpid()}')  # Per process: multi-host runs share it.
    tmp.write_text(json.dumps({p: dataclasses.asdict(c) for p, c in results.items()}))
    os.replace(tmp, cache_path)  # Never a half-written cache.
  return results
