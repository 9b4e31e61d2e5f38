"""A trained run's checkpoint as a file that serves without JAX: `python -m jaxcls.cli.export`.

The exported function takes uint8 [N, S, S, 3] RGB images, already resized and
cropped as evaluation does (`jaxcls.evaluation.predict.load_and_preprocess`:
S = the run's data.image_size), and returns float32 logits [N, classes]. The
normalisation, (x / 255 - mean) / std, is inside it; N is free (a dynamic
batch dimension in all three formats).

  onnx        an ONNX model (jax2onnx, opset `ONNX_OPSET`), run by ONNX Runtime.
  savedmodel  a TensorFlow SavedModel (jax2tf): signature 'serving_default',
              input 'images', output 'logits'. Its computation is XLA
              (StableHLO in an XlaCallModule op) lowered for CPU.
  tflite      a float32 TFLite flat buffer converted from that SavedModel.

Every export is checked in its own runtime before it is reported done: the
file is run on real images (the run's test split, or files given) and its
logits compared with the JAX forward of the same checkpoint; a relative
difference (max |difference| / max |logit|) above `TOLERANCE` is an
`ExportParityError` (the file is kept, for inspection). Beside the model,
`<model>.json` records the class names, the preprocessing the caller does
(image_size, resize_size, interpolation) and the one inside (mean, std), the
input layout, the source run and step, and the parity figures measured.

The convolutions are exported as convolutions (`conv_lowering='xla'`, not the
CPU training's patch matmuls), and a bfloat16 run computes in float32. The
converters are imported only when their format is asked for.
"""

import dataclasses
import datetime
import importlib
import itertools
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.extend import core as jax_core

from jaxcls import data
from jaxcls.data import transforms
from jaxcls.evaluation.predict import list_image_files, load_and_preprocess
from jaxcls.models.conv import set_conv_lowering
from jaxcls.training.steps import normalize

FORMATS = ('onnx', 'savedmodel', 'tflite')
DEFAULT_NAMES = {'onnx': 'model.onnx', 'savedmodel': 'saved_model', 'tflite': 'model.tflite'}
TOLERANCE = 1e-4  # Largest max |exported - JAX| / max |JAX logit| accepted.
ONNX_OPSET = 17  # ONNX Runtime >= 1.11 and most other runtimes read it.
MAX_CHECK_IMAGES = 16
INPUT_NAME, OUTPUT_NAME = 'images', 'logits'


class ExportError(Exception):
  """An export that could not be done or checked: one line for the user."""


class MissingConverterError(ExportError, ImportError):
  """The package a format needs is not installed."""


class ConversionError(ExportError):
  """The converter failed on this model (an operation it cannot write, ...)."""


class ExportParityError(ExportError):
  """The exported file computes other logits than JAX does."""


@dataclasses.dataclass(frozen=True)
class Parity:
  images: int
  max_abs_diff: float
  max_rel_diff: float  # max |exported - JAX| / max |JAX logit|.
  max_abs_logit: float
  same_top1: int  # Images whose argmax agrees.

  @property
  def ok(self) -> bool:
    return self.max_rel_diff <= TOLERANCE


@dataclasses.dataclass(frozen=True)
class Exported:
  format: str
  path: Path
  metadata_path: Path
  parity: Parity


def metadata_path(out: str | Path) -> Path:
  """Where the metadata of the model at `out` goes: `<out>.json` (model.onnx.json, ...)."""
  return Path(str(Path(out)) + '.json')


def default_out(workdir: str | Path, fmt: str) -> Path:
  return Path(workdir) / 'export' / DEFAULT_NAMES[fmt]


def _import(module: str, fmt: str, install: str):
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise MissingConverterError(f'--format={fmt} needs {module.split(".")[0]}, which is not '
                                f'installed ({e}): pip install {install}') from e


def serving_function(run) -> Callable[[jax.Array], jax.Array]:
  """uint8 [N, S, S, 3] -> float32 logits: the run's eval-mode model with the normalisation
  in front, its convolutions lowered as convolutions and its activations in float32."""
  graphdef, state = nnx.split(run.model)
  model = set_conv_lowering(nnx.merge(graphdef, state), 'xla')  # A copy: run.model keeps its.
  for _, module in nnx.iter_modules(model):
    if getattr(module, 'dtype', None) is not None and jnp.dtype(module.dtype) == jnp.bfloat16:
      module.dtype = jnp.float32
  graphdef, state = nnx.split(model)
  mean, std = tuple(run.config.data.mean), tuple(run.config.data.std)

  def serve(images):
    return nnx.merge(graphdef, state)(normalize(images, mean, std, jnp.float32)).astype(
        jnp.float32)

  return serve


def check_images(run, paths: Sequence[str] = (), limit: int = MAX_CHECK_IMAGES
                 ) -> tuple[np.ndarray, str]:
  """(uint8 [n, S, S, 3] images, where they came from): up to `limit` of the files (or
  folders) `paths`, preprocessed as `jaxcls predict` does, or else the run's first test
  images. Raises ExportError when there are none."""
  data_config = run.config.data
  if paths:
    resize = transforms.Resize.from_config(data_config)
    images = []
    for path in list_image_files(paths):
      try:
        images.append(load_and_preprocess(path, resize.image_size, resize.resize_size,
                                          resize.interpolation))
      except Exception:  # pylint: disable=broad-except  # Unreadable: the next file.
        continue
      if len(images) == limit:
        break
    if not images:
      raise ExportError(f'no readable images in {", ".join(map(str, paths))} to check the '
                        f'export with')
    return np.stack(images), f'{len(images)} of the images given ({", ".join(map(str, paths))})'
  try:
    dataset = data.load_dataset(data_config, str(run.workdir))
    batch = next(iter(data.eval_batches(dataset.test, data_config, global_batch_size=limit)))
  except Exception as e:  # pylint: disable=broad-except  # Data moved, TFDS offline, ...
    raise ExportError(f"cannot read the run's test split to check the export with "
                      f'({type(e).__name__}: {_first_line(e)}); give images with --images') from e
  images = np.asarray(batch['image'])[np.asarray(batch['mask'], bool)]
  if not len(images):
    raise ExportError(f'the test split of {run.workdir} is empty; give images with --images')
  return images, f"the first {len(images)} images of the run's test split"


def compare(exported: np.ndarray, reference: np.ndarray) -> Parity:
  exported = np.asarray(exported, np.float64)
  reference = np.asarray(reference, np.float64)
  if exported.shape != reference.shape:
    raise ExportParityError(f'the exported model returns shape {exported.shape}, JAX '
                            f'{reference.shape}')
  max_abs = float(np.max(np.abs(exported - reference))) if exported.size else 0.0
  scale = float(np.max(np.abs(reference))) if reference.size else 0.0
  if not np.all(np.isfinite(exported)):
    max_abs = float('inf')
  return Parity(images=int(reference.shape[0]), max_abs_diff=max_abs,
                max_rel_diff=max_abs / scale if scale > 0 else max_abs,
                max_abs_logit=scale,
                same_top1=int(np.sum(exported.argmax(-1) == reference.argmax(-1))))


# ------------------------------------------------------------------------------------ ONNX ---

def _max_pool_as_slices(x, *, window_dimensions, window_strides, padding, base_dilation,
                        window_dilation):
  """lax.reduce_window_max as the elementwise max of the window's strided slices.

  jax2onnx 0.17 writes an NHWC max pool as a 4-D ONNX MaxPool, which reads the layout as
  NCHW and which ONNX Runtime refuses ("Unsupported pooling size"); slices and Max are
  exact and convert everywhere."""
  if any(d != 1 for d in (*base_dilation, *window_dilation)):
    return lax.reduce_window_max_p.bind(
        x, window_dimensions=window_dimensions, window_strides=window_strides, padding=padding,
        base_dilation=base_dilation, window_dilation=window_dilation)
  for axis, (lo, hi) in enumerate(padding):  # -inf rows and columns (jax2onnx's Pad fails
    if lo or hi:                              # on a symbolic batch dimension).
      edge = jnp.minimum(lax.slice_in_dim(x, 0, 1, axis=axis), -jnp.inf)
      x = jnp.concatenate([edge] * lo + [x] + [edge] * hi, axis=axis)
  axes = [a for a, (w, s) in enumerate(zip(window_dimensions, window_strides))
          if w != 1 or s != 1]
  out = None
  for offsets in itertools.product(*(range(window_dimensions[a]) for a in axes)):
    tap = x
    for axis, offset in zip(axes, offsets):
      window, stride = window_dimensions[axis], window_strides[axis]
      size = (x.shape[axis] - window) // stride + 1
      tap = lax.slice_in_dim(tap, offset, offset + (size - 1) * stride + 1, stride, axis)
    out = tap if out is None else jnp.maximum(out, tap)
  return x if out is None else out


def _eval_for_onnx(jaxpr, consts, *args):
  """`jax.core.eval_jaxpr`, with max pools rewritten (`_max_pool_as_slices`).

  Converting the traced primitives rather than the model itself also keeps jax2onnx's
  flax.nnx plugins out: in 0.17 its Conv/BatchNorm shims mislabel NHWC shapes and produce
  graphs ONNX Runtime rejects."""
  env = {}

  def read(var):
    return var.val if isinstance(var, jax_core.Literal) else env[var]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    values = [read(v) for v in eqn.invars]
    if eqn.primitive.name == 'reduce_window_max':
      outs = [_max_pool_as_slices(values[0], **eqn.params)]
    elif eqn.primitive.name in ('pjit', 'jit', 'closed_call') and 'jaxpr' in eqn.params:
      inner = eqn.params['jaxpr']
      outs = _eval_for_onnx(inner.jaxpr, inner.consts, *values)
    else:
      with eqn.ctx.manager:
        outs = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
      if not eqn.primitive.multiple_results:
        outs = [outs]
    env.update(zip(eqn.outvars, outs))
  return [read(v) for v in jaxpr.outvars]


def export_onnx(serve, image_size: int, out: Path) -> Callable[[np.ndarray], np.ndarray]:
  """Writes `out` (.onnx); returns its ONNX Runtime session as images -> logits."""
  install = '"jaxcls[export]" (jax2onnx, onnxruntime)'
  jax2onnx = _import('jax2onnx', 'onnx', install)
  # Its plugins for libraries jaxcls does not use (dm_pix) warn with tracebacks on a newer JAX.
  logging.getLogger('jax2onnx').setLevel(logging.ERROR)
  ort = _import('onnxruntime', 'onnx', install)
  batch, = jax.export.symbolic_shape('N')
  spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.uint8)
  closed = jax.make_jaxpr(serve)(spec)
  out.parent.mkdir(parents=True, exist_ok=True)
  jax2onnx.to_onnx(lambda images: _eval_for_onnx(closed.jaxpr, closed.consts, images)[0], [spec],
                   model_name='jaxcls', opset=ONNX_OPSET, return_mode='file',
                   output_path=str(out), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
  session = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
  name = session.get_inputs()[0].name
  return lambda images: session.run(None, {name: images})[0]


# ------------------------------------------------------------------------- TF and TFLite ---

def _tensorflow(fmt: str):
  return _import('tensorflow', fmt, 'tensorflow-cpu')


def _save_saved_model(serve, image_size: int, out: Path, tf) -> None:
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top  # Imports TF.
  tf_serve = jax2tf.convert(serve, polymorphic_shapes=['(n, ...)'], with_gradient=False,
                            native_serialization_platforms=('cpu',))
  module = tf.Module()
  module.serve = tf.function(
      lambda images: {OUTPUT_NAME: tf_serve(images)}, autograph=False,
      input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8,
                                     name=INPUT_NAME)])
  out.parent.mkdir(parents=True, exist_ok=True)
  tf.saved_model.save(module, str(out),
                      signatures={'serving_default': module.serve.get_concrete_function()})


def export_savedmodel(serve, image_size: int, out: Path) -> Callable[[np.ndarray], np.ndarray]:
  """Writes the SavedModel folder `out`; returns it, reloaded by TF, as images -> logits."""
  tf = _tensorflow('savedmodel')
  _save_saved_model(serve, image_size, out, tf)
  signature = tf.saved_model.load(str(out)).signatures['serving_default']
  return lambda images: signature(**{INPUT_NAME: tf.constant(images)})[OUTPUT_NAME].numpy()


def tflite_interpreter(model_path: str | Path):
  """LiteRT's interpreter (ai_edge_litert) when installed, else tf.lite's (deprecated)."""
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  except ImportError:
    tf = _tensorflow('tflite')
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # "tf.lite.Interpreter is deprecated": it still runs.
      return tf.lite.Interpreter(model_path=str(model_path))
  return Interpreter(model_path=str(model_path))


def run_tflite(interpreter, images: np.ndarray) -> np.ndarray:
  """Logits of `images` from a TFLite interpreter of an export (any batch size)."""
  inp = interpreter.get_input_details()[0]
  interpreter.resize_tensor_input(inp['index'], list(images.shape))
  interpreter.allocate_tensors()
  interpreter.set_tensor(inp['index'], np.ascontiguousarray(images, np.uint8))
  interpreter.invoke()
  return interpreter.get_tensor(interpreter.get_output_details()[0]['index'])


def export_tflite(serve, image_size: int, out: Path) -> Callable[[np.ndarray], np.ndarray]:
  """Writes the float32 TFLite file `out` (through a temporary SavedModel); returns its
  interpreter as images -> logits."""
  tf = _tensorflow('tflite')
  with tempfile.TemporaryDirectory(prefix='jaxcls-export-') as tmp:
    saved = Path(tmp) / 'saved_model'
    _save_saved_model(serve, image_size, saved, tf)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    flat_buffer = converter.convert()
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_bytes(flat_buffer)
  interpreter = tflite_interpreter(out)
  return lambda images: run_tflite(interpreter, images)


EXPORTERS = {'onnx': export_onnx, 'savedmodel': export_savedmodel, 'tflite': export_tflite}


def _check_out(fmt: str, out: Path) -> None:
  """Refuses to write over what is not an earlier export of the same kind."""
  if fmt == 'savedmodel':
    if out.is_file():
      raise FileExistsError(f'{out} is a file; a SavedModel is a folder')
    if out.is_dir() and any(out.iterdir()) and not (out / 'saved_model.pb').is_file():
      raise FileExistsError(f'{out} is a folder with other files in it than a SavedModel')
  elif out.is_dir():
    raise IsADirectoryError(f'{out} is a folder; give the file to write')


def export(run, fmt: str, out: str | Path | None = None, images: Sequence[str] = ()) -> Exported:
  """Exports `run` (a `jaxcls.evaluation.reopen.Run`) as `fmt` to `out` (default:
  WORKDIR/export/model.onnx, saved_model/ or model.tflite), checks it on up to 16 images
  (`check_images`) and writes `<out>.json`. Raises ExportParityError, after writing both,
  when the exported logits differ from JAX's by more than TOLERANCE."""
  if fmt not in FORMATS:
    raise ValueError(f'unknown export format {fmt!r}; one of {", ".join(FORMATS)}')
  out = Path(out) if out else default_out(run.workdir, fmt)
  _check_out(fmt, out)
  check, source = check_images(run, images)
  serve = serving_function(run)
  reference = np.asarray(jax.jit(serve)(check))
  image_size = int(run.config.data.image_size)
  if fmt == 'savedmodel' and out.is_dir():
    shutil.rmtree(out)  # An earlier SavedModel (`_check_out`): replaced whole.
  try:
    exported = EXPORTERS[fmt](serve, image_size, out)(check)
  except ExportError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # Whatever the converter raises.
    raise ConversionError(f'converting {run.config.model.name} to {fmt} failed: '
                          f'{type(e).__name__}: {_first_line(e)}') from e
  parity = compare(exported, reference)
  resize = transforms.Resize.from_config(run.config.data)
  meta = {
      'format': fmt,
      'model_file': out.name,
      # A large ONNX model keeps its weights in a file beside it, which must travel with it.
      'weights_files': sorted(p.name for p in out.parent.glob(f'{out.name}.data')) or None,
      'class_names': list(run.class_names),
      'input': {'name': INPUT_NAME, 'dtype': 'uint8', 'layout': 'NHWC',
                'shape': [None, image_size, image_size, 3], 'channels': 'RGB',
                'range': '0-255, resized and center-cropped as below, not normalised'},
      'output': {'name': OUTPUT_NAME, 'dtype': 'float32', 'shape': [None, len(run.class_names)],
                 'meaning': 'logits (softmax for probabilities)'},
      'preprocessing': {
          'image_size': image_size, 'resize_size': int(resize.resize_size),
          'interpolation': resize.interpolation,
          'steps': 'decode to RGB (EXIF rotation applied); resize the shorter side to '
                   'resize_size and center-crop image_size (resize_size 0: resize straight '
                   'to image_size x image_size); in the model: (x / 255 - mean) / std',
          'mean': [float(m) for m in run.config.data.mean],
          'std': [float(s) for s in run.config.data.std],
          'normalisation_in_model': True},
      'model': {'name': run.config.model.name, 'trained_dtype': run.config.model.dtype,
                'exported_dtype': 'float32'},
      'source': {'workdir': str(Path(run.workdir).resolve()), 'step': int(run.step),
                 'epoch': int(run.epoch), 'weights': run.weights},
      'parity': {**dataclasses.asdict(parity), 'tolerance': TOLERANCE, 'ok': parity.ok,
                 'images_from': source,
                 'reference': 'the JAX forward of the same checkpoint (float32, jitted)'},
      'onnx_opset': ONNX_OPSET if fmt == 'onnx' else None,
      'exported_at': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'versions': _versions(fmt),
  }
  meta_file = metadata_path(out)
  meta_file.write_text(json.dumps({k: v for k, v in meta.items() if v is not None}, indent=2)
                       + '\n')
  result = Exported(format=fmt, path=out, metadata_path=meta_file, parity=parity)
  if not parity.ok:
    raise ExportParityError(
        f'{out}: the exported logits differ from JAX by {parity.max_abs_diff:.3g} '
        f'(relative {parity.max_rel_diff:.3g} > {TOLERANCE:g}) on {parity.images} images; '
        f'the file is kept for inspection')
  return result


def _first_line(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return lines[0][:500] if lines else ''


def _versions(fmt: str) -> dict:
  import importlib.metadata as metadata  # pylint: disable=g-import-not-at-top
  names = {'onnx': ('jax', 'flax', 'jax2onnx', 'onnxruntime'),
           'savedmodel': ('jax', 'flax', 'tensorflow-cpu', 'tensorflow'),
           'tflite': ('jax', 'flax', 'tensorflow-cpu', 'tensorflow', 'ai-edge-litert')}[fmt]
  found = {}
  for name in names:
    try:
      found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return found
