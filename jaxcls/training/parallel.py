"""Devices, meshes and moving host batches onto them.

Data parallelism is one mesh axis, 'data': batches are sharded along it and
the train state is replicated. `jax.jit` turns the per-example maths of the
steps into one SPMD program, so BatchNorm statistics, the loss and the
gradients are reduced over the global batch with no hand-written collectives.
"""

import collections
import os
from collections.abc import Iterable, Iterator

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def initialize_distributed() -> None:
  """Starts JAX's multi-host runtime when the environment describes several processes.

  `jax.distributed.initialize()` finds the coordinator itself on Cloud TPU
  pods, SLURM and Open MPI; JAX_COORDINATOR_ADDRESS (host:port of process 0),
  JAX_NUM_PROCESSES and JAX_PROCESS_ID describe any other launch (JAX reads
  only the address itself, so the other two are passed here). A
  single-process run skips it. On CPU the processes reduce over gloo.
  """
  env = os.environ
  multi_process = (
      'JAX_COORDINATOR_ADDRESS' in env
      or int(env.get('SLURM_NTASKS', '1')) > 1
      or int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1
      or ',' in env.get('TPU_WORKER_HOSTNAMES', ''))
  if multi_process:
    explicit = {}
    if 'JAX_NUM_PROCESSES' in env and 'JAX_PROCESS_ID' in env:
      explicit = dict(num_processes=int(env['JAX_NUM_PROCESSES']),
                      process_id=int(env['JAX_PROCESS_ID']))
    jax.distributed.initialize(**explicit)
    logging.info('jax.distributed: process %d of %d', jax.process_index(), jax.process_count())


def data_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec('data'))


def to_device(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's part of a batch -> global arrays sharded along the batch axis."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def prefetch_to_device(batches: Iterable[dict[str, np.ndarray]], sharding: NamedSharding,
                       size: int = 2) -> Iterator[dict[str, jax.Array]]:
  """Keeps `size` batches in flight to the devices while the current step runs.

  Transfers are asynchronous, so queueing them ahead overlaps the copy of the
  next batches with the computation of this one.
  """
  queue = collections.deque()
  for batch in batches:
    queue.append(to_device(batch, sharding))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
