"""How many threads a cordfuse process may run: the cores it may use, not the cores it sees.

On a cluster node a job is given a few cores of many (CPU affinity under Slurm or ``taskset``, a
CPU quota under Docker or Kubernetes cgroups), and on a shared workstation two jobs share the
same cores. A process that starts one torch/OpenMP/BLAS thread per core it *sees* then runs more
threads than it has cores; OpenMP threads that spin while they wait for each other then take the
cores from the threads doing the work, and two trainings on 2 cores ran 6-45 times slower each,
not 2 (measured, docs/performance.md). So every verb sets its thread pools once, from
:func:`threads_budget`: ``--threads N`` first, then the ``CORDFUSE_THREADS`` environment variable,
then the cores this process may use (affinity and cgroup quota); and OpenMP threads spin only
briefly before they sleep (:data:`OPENMP_WAIT`) unless the user chose otherwise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path

from cordfuse.errors import CordfuseError

#: The environment variable that sets the threads of every verb (``--threads`` wins over it).
THREADS_ENV = "CORDFUSE_THREADS"
#: Where the cgroup CPU quota is read (v2: ``cpu.max``; v1: ``cpu/cpu.cfs_quota_us``).
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: The thread-count variables a child process's OpenMP and BLAS libraries read when they start.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup, in cores (``1.5``: one and a half cores).

    Args:
        root: The cgroup mount (a folder with the same files, in tests).

    Returns:
        The quota, or None when there is none (``max`` or ``-1``) or it cannot be read.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "cpu.max").write_text("150000 100000\\n")
    >>> cgroup_cpu_limit(root)
    1.5
    """
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2
    except (OSError, ValueError):
        try:  # cgroup v1
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        cores = int(quota) / int(period)
    except ValueError:  # "max": no quota
        return None
    return cores if cores > 0 else None


def usable_cores(root: Path = CGROUP_ROOT) -> int:
    """The cores this process may run on: its CPU affinity, capped by its cgroup's CPU quota
    (rounded up: a quota of 1.5 cores still runs two threads at a time).

    Args:
        root: The cgroup mount.

    Returns:
        At least 1.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def threads_budget(
    requested: int | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    processes: int = 1,
) -> int:
    """The threads each of ``processes`` processes runs: ``requested`` (``--threads``), else
    ``CORDFUSE_THREADS``, else the usable cores, shared between the processes.

    Args:
        requested: ``--threads`` (None: not given). It is already per process.
        environ: The environment (default: ``os.environ``).
        processes: Processes that share the budget (``--jobs`` workers, DDP ranks on one node).

    Returns:
        At least 1.

    Raises:
        CordfuseError: ``requested`` or the variable is not a whole number of at least 1.

    >>> threads_budget(3)
    3
    >>> threads_budget(None, {"CORDFUSE_THREADS": "4"}, processes=2)
    2
    """
    if requested is not None:
        if requested < 1:
            raise CordfuseError(f"--threads must be at least 1, got {requested}")
        return requested
    environ = os.environ if environ is None else environ
    text = environ.get(THREADS_ENV, "").strip()
    if text:
        try:
            total = int(text)
        except ValueError:
            total = 0
        if total < 1:
            raise CordfuseError(
                f"{THREADS_ENV}={text!r}: not a number of threads (a whole number, at least 1)"
            )
    else:
        total = usable_cores()
    return max(1, total // max(1, processes))


#: What OpenMP threads do while they wait, unless the user chose: libgomp's threads (PyTorch's
#: Linux wheels) spin 1,000 rounds (about 10 microseconds) and then sleep; LLVM's and Intel's
#: (``KMP_BLOCKTIME`` 0) sleep at once, as under ``OMP_WAIT_POLICY=PASSIVE``. Measured on 2
#: cores (docs/performance.md): 10-16 % faster than sleeping at once for a job alone, and two jobs
#: side by side each 1.7x their time alone (libgomp's default spin, 300,000 rounds: 30x).
OPENMP_WAIT = {"GOMP_SPINCOUNT": "1000", "KMP_BLOCKTIME": "0"}
#: The variables by which a user chooses how OpenMP threads wait.
OPENMP_WAIT_VARIABLES = ("OMP_WAIT_POLICY", *OPENMP_WAIT)


def short_spin_openmp(environ: MutableMapping[str, str] | None = None) -> None:
    """Make waiting OpenMP threads spin briefly and then sleep (:data:`OPENMP_WAIT`), unless the
    user chose how they wait: ``OMP_WAIT_POLICY`` leaves both runtimes' variables alone, a
    runtime's own variable (``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME``) leaves that one alone.

    Effective only before the OpenMP runtime starts (before torch is imported), which the CLI
    ensures: its verbs import torch inside ``run``. A long spin gains little on a free machine
    and takes the cores of every other process on a shared one; sleeping at once costs a job
    alone a sixth of its speed, because a sleeping thread is slow to wake for small operations.

    Args:
        environ: The environment to set (default: ``os.environ``).
    """
    environ = os.environ if environ is None else environ
    for name, value in OPENMP_WAIT.items():
        # each runtime reads OMP_WAIT_POLICY and its own variable: an Intel setup script's
        # KMP_BLOCKTIME must not leave libgomp at its 300,000-round default spin
        if "OMP_WAIT_POLICY" not in environ and name not in environ:
            environ[name] = value


def set_threads(threads: int) -> None:
    """Run this process's torch, OpenMP, BLAS and SimpleITK thread pools with ``threads``
    threads, and start child processes (``--jobs`` workers) with the same limit; the API calls
    made from here on (a study's ``prepare_dataset``, the demo's ``predict_dataset``) share the
    same budget (:data:`THREADS_ENV`), so that ``--threads`` holds for them too.

    Args:
        threads: At least 1.
    """
    import SimpleITK as sitk
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)  # numpy's BLAS and any other OpenMP runtime in the process
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    for name in (*THREAD_VARIABLES, THREADS_ENV):
        os.environ[name] = str(threads)


@contextmanager
def limited_threads(threads: int) -> Iterator[None]:
    """:func:`set_threads` for the duration of a block, then the pools and variables as they
    were: a verb run in-process (tests, a notebook) leaves its caller as it found it.

    Args:
        threads: At least 1.
    """
    import SimpleITK as sitk
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    sitk_before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    variables = {name: os.environ.get(name) for name in (*THREAD_VARIABLES, THREADS_ENV)}
    with threadpool_limits(threads):  # restores the BLAS/OpenMP pools on the way out
        set_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(sitk_before)
            for name, value in variables.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
