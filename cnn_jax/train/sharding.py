"""Data parallelism on jax.sharding: one mesh axis "data", batch split on it, state replicated.

The same code runs on one CPU, on N local devices and on many hosts: a ``Mesh`` over
``jax.devices()`` (all processes' devices), ``NamedSharding(mesh, P("data"))`` for batches and
``NamedSharding(mesh, P())`` for parameters. XLA (GSPMD) inserts the gradient all-reduce, and
BatchNorm's batch mean becomes a mean over the global batch (synchronised BN for free), so
N devices compute what one device computes on the whole batch, up to summation order.

Multi-host: ``initialize_distributed`` wraps ``jax.distributed.initialize``; each process then
loads only its rows of every global batch (``process_rows``) and ``global_batch`` assembles the
global array from the per-process pieces.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named "data" over ``devices`` (default: every device of every process).

  Auto axis type: GSPMD propagates the batch sharding through the model, so models need no
  sharding annotations of their own.
  """
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over "data"; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device (parameters, optimizer state, scalars)."""
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
  """Raises ValueError unless ``batch_size`` splits evenly over the mesh and the processes."""
  n = mesh.devices.size
  if int(batch_size) != batch_size or batch_size <= 0 or batch_size % n:
    raise ValueError(f"{name}={batch_size!r}: must be a positive multiple of the device count "
                     f"{n} (mesh {dict(mesh.shape)})")
  if batch_size % jax.process_count():
    raise ValueError(f"{name}={batch_size!r}: must be a multiple of the process count "
                     f"{jax.process_count()}")


def process_rows(global_batch_size: int) -> slice:
  """This process's rows of a global batch (processes own contiguous, equal blocks)."""
  per_process = global_batch_size // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, global_batch_size: int):
  """Assembles a batch sharded on "data" from this process's rows (``process_rows``).

  Args:
    local: arrays whose leading axis holds this process's ``global_batch_size /
      process_count`` rows.
    mesh: the data mesh.
    global_batch_size: rows of the assembled global arrays.
  Returns:
    The same dict of ``jax.Array`` with leading axis ``global_batch_size``, sharded on "data".
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(
      sharding, v, (global_batch_size, *v.shape[1:])) for k, v in local.items()}


def describe(mesh: Mesh) -> str:
  """One line: axis sizes, device kinds and process count, for the start-of-run log."""
  kinds = sorted({d.device_kind for d in mesh.devices.flat})
  return (f"mesh {dict(mesh.shape)} over {mesh.devices.size} device(s) "
          f"[{', '.join(kinds)}], {jax.process_count()} process(es)")


def initialize_distributed(coordinator_address: str, num_processes: int,
                           process_id: int) -> bool:
  """Joins a multi-process run (``jax.distributed.initialize``) when ``num_processes > 1``.

  Must run before any other JAX call in the process. On CPU it selects gloo collectives, the
  jaxlib implementation that can all-reduce across processes.

  Returns:
    True if this call initialised the distributed runtime.
  Raises:
    ValueError: inconsistent fields.
  """
  if num_processes is None or int(num_processes) != num_processes or num_processes < 1:
    raise ValueError(f"num_processes={num_processes!r}: must be an integer >= 1")
  if num_processes == 1:
    return False
  if not coordinator_address:
    raise ValueError(f"coordinator_address={coordinator_address!r}: must be host:port "
                     f"when num_processes={num_processes} > 1")
  if not 0 <= process_id < num_processes:
    raise ValueError(f"process_id={process_id!r}: must be in [0, {num_processes})")
  if jax.distributed.is_initialized():
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  logging.info("joining %d processes at %s as process %d", num_processes, coordinator_address,
               process_id)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=int(num_processes), process_id=int(process_id))
  return True
