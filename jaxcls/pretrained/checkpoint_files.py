"""Reading PyTorch checkpoint files into {key: numpy array}, safely.

`.safetensors` needs only the `safetensors` package. `.pth`/`.pt`/`.bin` need
torch (`pip install jaxcls[torch]`) and are read ONLY with
`torch.load(..., weights_only=True)`: a pickle can run arbitrary code, and a
checkpoint downloaded from the internet must never be able to.
"""

import hashlib
from pathlib import Path

import numpy as np

# Containers under which training scripts nest the weights.
_NESTED_KEYS = ('state_dict', 'model', 'model_state_dict', 'module')


class CheckpointFileError(ValueError):
  """The file is missing, truncated, not a checkpoint, or of an unknown kind."""


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
  path = Path(path)
  if not path.is_file():
    raise CheckpointFileError(f'checkpoint {str(path)!r} does not exist')
  suffix = path.suffix.lower()
  if suffix == '.safetensors':
    state = _read_safetensors(path)
  elif suffix in ('.pth', '.pt', '.bin', '.ckpt'):
    state = _read_torch(path)
  else:
    raise CheckpointFileError(
        f'{path}: unknown checkpoint kind {suffix!r}; expected .safetensors, .pth, .pt or .bin')
  if not state:
    raise CheckpointFileError(f'{path}: holds no tensors')
  return state


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  try:
    return dict(load_file(str(path)))
  except (SafetensorError, OSError, ValueError) as e:
    raise CheckpointFileError(f'{path}: not a readable safetensors file ({e})') from e


def _read_torch(path: Path) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointFileError(
        f'{path}: reading .pth/.pt files needs PyTorch: pip install "jaxcls[torch]" '
        '(or convert the file to .safetensors)') from e
  try:
    obj = torch.load(str(path), map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    # torch raises RuntimeError, UnpicklingError, EOFError... for truncated or unsafe files.
    first_line = (str(e).strip().splitlines() or [''])[0][:200]
    raise CheckpointFileError(
        f'{path}: cannot be read as a weights-only PyTorch checkpoint (not one, truncated, or '
        f'one that would need code to load; {type(e).__name__}: {first_line})') from e
  while isinstance(obj, dict) and not _is_flat_tensor_dict(obj, torch):
    nested = next((obj[k] for k in _NESTED_KEYS if isinstance(obj.get(k), dict)), None)
    if nested is None:
      raise CheckpointFileError(f'{path}: a dict without tensors (keys: {sorted(obj)[:10]})')
    obj = nested
  if not isinstance(obj, dict):
    raise CheckpointFileError(f'{path}: holds a {type(obj).__name__}, not a state dict')
  state = {}
  for key, value in obj.items():
    key = key.removeprefix('module.')  # Saved from DataParallel/DistributedDataParallel.
    state[key] = value.detach().to(torch.float32).numpy() if value.is_floating_point() else (
        value.numpy())
  return state


def _is_flat_tensor_dict(obj: dict, torch) -> bool:
  return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def sha256(path: str | Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()
