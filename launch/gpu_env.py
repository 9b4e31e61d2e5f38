"""The machine a benchmark ran on, and the matrix rate its accelerator actually reaches.

    python launch/gpu_env.py [--matmul_size 8192] [--json env.json]

Prints and writes: the date, Python, jax/jaxlib/flax/optax/torch versions, the
JAX devices and what nvidia-smi says of the GPU (driver, memory, clocks), CPU
cores, and the bfloat16 matmul rate of an N x N x N product through JAX
(median of 10 after 3 warm-ups, random data): the ceiling MFU can reach in
practice, beside the datasheet peak it is counted against.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import time


def versions() -> dict:
  out = {'python': platform.python_version()}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'torch',
               'torchvision', 'numpy'):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def nvidia_smi() -> dict | None:
  fields = 'name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit'
  try:
    line = subprocess.run(['nvidia-smi', f'--query-gpu={fields}', '--format=csv,noheader'],
                          capture_output=True, text=True, timeout=20, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return None
  return dict(zip(fields.split(','), (v.strip() for v in line.splitlines()[0].split(','))))


def matmul_tflops(size: int) -> float:
  """Median TFLOP/s of a bf16 size^3 product (float32 on a CPU, where bf16 is emulated)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dtype = jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16
  a, b = (jax.random.normal(jax.random.PRNGKey(i), (size, size), dtype) for i in (0, 1))
  product = jax.jit(jnp.matmul)
  for _ in range(3):
    product(a, b).block_until_ready()
  seconds = []
  for _ in range(10):
    started = time.perf_counter()
    product(a, b).block_until_ready()
    seconds.append(time.perf_counter() - started)
  return 2 * size**3 / statistics.median(seconds) / 1e12


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--matmul_size', type=int, default=8192)
  parser.add_argument('--json', default=None)
  args = parser.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  env = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
             versions=versions(), backend=jax.default_backend(),
             devices=[d.device_kind for d in jax.devices()], cpu_count=os.cpu_count(),
             nvidia_smi=nvidia_smi(), matmul_size=args.matmul_size,
             matmul_tflops=matmul_tflops(args.matmul_size))
  print(json.dumps(env, indent=1))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(env, f, indent=1)


if __name__ == '__main__':
  main()
