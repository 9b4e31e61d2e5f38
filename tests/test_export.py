"""`jaxcls export`: ONNX, TF SavedModel and TFLite files that compute the run's logits.

Each export is run again here in its own runtime, on real photos (ants and bees from
../shared/data, resized to the run's input size) and at another batch size than the export
checked, and compared with `Run.logits`, the JAX forward `jaxcls predict` uses.
"""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from jaxcls.config import default_config
from jaxcls.evaluation import export as exporting
from jaxcls.evaluation.predict import list_image_files, load_and_preprocess
from jaxcls.evaluation.reopen import Run, load_run
from jaxcls.models import create_model

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / 'shared' / 'data' / 'hymenoptera' / 'hymenoptera_data' / 'val'
needs_photos = pytest.mark.skipif(
    not PHOTOS.is_dir(), reason=f'no ants/bees photos at {PHOTOS} (see '
    '../shared/data/SOURCES.md where that folder exists)')


def photo_files(count: int = 4) -> list[str]:
  return [f for kind in ('ants', 'bees') for f in list_image_files([PHOTOS / kind])[:count]]


def photos(run, files) -> np.ndarray:
  data = run.config.data
  return np.stack([load_and_preprocess(f, data.image_size, data.resize_size) for f in files])


def relative_difference(logits, reference) -> float:
  return float(np.max(np.abs(np.asarray(logits, np.float64) - reference))
               / np.max(np.abs(reference)))


def run_exported(fmt: str, path: Path, images: np.ndarray) -> np.ndarray:
  """`images` through the exported file in its own runtime, reloaded from disk."""
  if fmt == 'onnx':
    import onnxruntime  # pylint: disable=g-import-not-at-top
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return session.run(['logits'], {'images': images})[0]
  if fmt == 'savedmodel':
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    serve = tf.saved_model.load(str(path)).signatures['serving_default']
    return serve(images=tf.constant(images))['logits'].numpy()
  return exporting.run_tflite(exporting.tflite_interpreter(path), images)


@pytest.fixture(scope='module')
def run(tiny_run_dir):
  return load_run(tiny_run_dir)


@pytest.fixture(scope='module')
def exports(run, tmp_path_factory):
  """{format: Exported} of the tiny run, checked on 8 photos."""
  pytest.importorskip('onnxruntime', reason='pip install -e ".[export]"')
  pytest.importorskip('jax2onnx', reason='pip install -e ".[export]"')
  if not PHOTOS.is_dir():
    pytest.skip(f'no ants/bees photos at {PHOTOS}')
  folder = tmp_path_factory.mktemp('export')
  return {fmt: exporting.export(run, fmt, folder / exporting.DEFAULT_NAMES[fmt], photo_files())
          for fmt in exporting.FORMATS}


@needs_photos
@pytest.mark.parametrize('fmt', exporting.FORMATS)
def test_export_gives_the_jax_logits_in_its_own_runtime(run, exports, fmt):
  exported = exports[fmt]
  assert exported.parity.ok and exported.parity.images == 8
  images = photos(run, photo_files(4)[1:6])  # 5 images: not the batch the export checked.
  reference = run.logits(images).astype(np.float64)
  logits = run_exported(fmt, exported.path, images)
  assert logits.shape == reference.shape and logits.dtype == np.float32
  assert relative_difference(logits, reference) <= 1e-4
  assert np.array_equal(logits.argmax(-1), reference.argmax(-1))


@needs_photos
@pytest.mark.parametrize('fmt', exporting.FORMATS)
def test_metadata_has_classes_preprocessing_and_parity(run, exports, fmt):
  exported = exports[fmt]
  assert exported.metadata_path == Path(str(exported.path) + '.json')
  meta = json.loads(exported.metadata_path.read_text())
  assert meta['format'] == fmt and meta['class_names'] == list(run.class_names)
  pre = meta['preprocessing']
  assert pre['image_size'] == run.config.data.image_size == 16
  assert (pre['resize_size'], pre['interpolation']) == (0, 'bilinear')
  assert pre['mean'] == list(run.config.data.mean) and pre['std'] == list(run.config.data.std)
  assert meta['input'] == {**meta['input'], 'name': 'images', 'dtype': 'uint8',
                           'layout': 'NHWC', 'shape': [None, 16, 16, 3]}
  assert meta['source']['step'] == run.step
  assert Path(meta['source']['workdir']) == Path(run.workdir).resolve()
  parity = meta['parity']
  assert parity['ok'] and parity['images'] == 8 and parity['max_rel_diff'] <= 1e-4
  assert parity['max_rel_diff'] == exported.parity.max_rel_diff


@pytest.mark.parametrize('window, strides, padding', [
    ((1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))),  # ResNet's stem.
    ((1, 2, 2, 1), (1, 2, 2, 1), ((0, 0), (0, 0), (0, 0), (0, 0))),  # VGG's.
    ((1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (0, 1), (0, 1), (0, 0))),  # GoogLeNet's ceil mode.
])
def test_max_pool_as_slices_equals_reduce_window(window, strides, padding):
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))
  expected = lax.reduce_window(x, -jnp.inf, lax.max, window, strides, padding)
  got = exporting._max_pool_as_slices(  # pylint: disable=protected-access
      x, window_dimensions=window, window_strides=strides, padding=padding,
      base_dilation=(1,) * 4, window_dilation=(1,) * 4)
  np.testing.assert_array_equal(got, expected)


def random_statistics(model: nnx.Module, seed: int = 0) -> nnx.Module:
  """`model` with its parameters jittered and BatchNorm statistics drawn away from (0, 1), so
  a conversion that drops or misplaces either shows in the logits."""
  graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  keys = iter(jax.random.split(jax.random.key(seed), 1000))
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(next(keys), a.shape, a.dtype),
                        params)
  stats = jax.tree.map(lambda a: jax.random.uniform(next(keys), a.shape, a.dtype, 0.2, 1.5),
                       stats)
  return nnx.merge(graphdef, params, stats, rest)


@needs_photos
@pytest.mark.parametrize('name', ['efficientnet_lite0', 'resnet18'])
def test_zoo_model_exports_to_onnx(name, tmp_path):
  """BatchNorm, depthwise convolutions and ReLU6 (EfficientNet-Lite), the max-pooled stem
  (ResNet-18), narrow and at 32x32 so that it converts in seconds."""
  pytest.importorskip('onnxruntime', reason='pip install -e ".[export]"')
  pytest.importorskip('jax2onnx', reason='pip install -e ".[export]"')
  config = default_config()
  config.model.name = name
  config.data.image_size = 32
  config.data.mean, config.data.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  model = random_statistics(create_model(name, num_classes=3, width=8))
  model.eval()
  run = Run(workdir=tmp_path, config=config, class_names=('a', 'b', 'c'), step=0, epoch=0,
            model=model)
  exported = exporting.export(run, 'onnx', tmp_path / 'model.onnx', photo_files(2))
  assert exported.parity.ok, exported.parity
  images = photos(run, photo_files(3))
  reference = run.logits(images).astype(np.float64)
  assert relative_difference(run_exported('onnx', exported.path, images), reference) <= 1e-4


def run_cli(*args):
  return subprocess.run([sys.executable, '-m', 'jaxcls', 'export', *map(str, args)], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def assert_one_line_error(result, *words):
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('jaxcls export:') and all(w in last for w in words), result.stderr


def test_cli_refuses_an_unknown_format_in_one_line(run):
  assert_one_line_error(run_cli('--workdir', run.workdir, '--format', 'pickle'),
                        '--format=pickle', 'onnx, savedmodel, tflite')


def test_cli_refuses_a_folder_that_is_not_a_run_in_one_line(tmp_path):
  assert_one_line_error(run_cli('--workdir', tmp_path, '--format', 'onnx'),
                        'not a jaxcls workdir')


@needs_photos
def test_cli_exports_and_prints_the_parity(run, tmp_path):
  pytest.importorskip('jax2onnx', reason='pip install -e ".[export]"')
  out = tmp_path / 'digits.onnx'
  result = run_cli('--workdir', run.workdir, '--format', 'onnx', '--out', out,
                   '--images', PHOTOS / 'ants')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'parity on 16 images' in result.stdout and 'max rel diff' in result.stdout
  meta = json.loads((tmp_path / 'digits.onnx.json').read_text())
  assert meta['parity']['ok'] and meta['model_file'] == 'digits.onnx'
