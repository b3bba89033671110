"""Many QM trajectories at once: a spawn process pool with one OpenMP thread per worker, and
the thread limits every QM or timing run sets before a library loads."""
from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

from mdkstep.baselines.ase_md import QMConfig, QMRunSpec, run_qm_trajectory
from mdkstep.molecule.system import System
from mdkstep.progress import Progress, default_every_s, resolve_mode, set_default_every_s
from mdkstep.utils import MdkstepError, setup_logging


@dataclass
class QMJob:
    """A (molecule, replica) pair for the worker pool."""

    system: System
    spec: QMRunSpec
    cfg: QMConfig
    progress: bool | None = False  #: the run's progress (mdkstep.progress: False = log lines only, None = silent)


def limit_threads(n_threads: int):
    """Limit OpenMP/BLAS threads of this process to ``n_threads``.

    Sets the environment (read by libraries loaded later) and, through threadpoolctl, every
    OpenMP/BLAS runtime already loaded (tblite and PySCF each bring one). Oversubscribed
    OpenMP is catastrophic here: GFN2-xTB on ethanol took ~600 ms/call with 2 threads on a busy
    2-core machine vs ~1 ms with 1 thread. Returns the ``threadpool_limits`` handle: use it as a
    context manager, or call ``restore_original_limits()`` to undo (not the environment).
    """
    from threadpoolctl import threadpool_limits

    n = max(1, int(n_threads))
    os.environ.update({k: str(n) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    return threadpool_limits(limits=n)


def _worker_init(n_threads: int, log_level: str, n_workers: int = 1) -> None:
    """Pool initializer: thread limits before any QM library loads, logging for the child, and
    log lines of a worker's trajectory every n_workers x 30 s (about one line per 30 s in all)."""
    limit_threads(n_threads)

    setup_logging(log_level)
    set_default_every_s(default_every_s() * max(1, n_workers))


def run_job(job: QMJob) -> dict[str, Any]:
    """Run one job; a failure is returned as ``{'error': one line}`` so the batch goes on."""
    try:
        return run_qm_trajectory(job.system, job.cfg, job.spec, progress=job.progress)
    except MdkstepError as e:
        return {"molecule": job.system.name, "label": job.spec.label, "out": str(job.spec.out_path), "error": str(e)}
    except Exception as e:  # a backend crash in one molecule must not kill the batch
        return {"molecule": job.system.name, "label": job.spec.label, "out": str(job.spec.out_path),
                "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def default_threads(engine: str, num_workers: int) -> int:
    """OpenMP threads per worker when none are given: 1. The molecules here are tiny; threads
    gain little and oversubscription (workers x threads > free cores) costs up to 100x.
    Raise ``omp_num_threads`` for larger PySCF systems or basis sets."""
    return 1


def run_jobs(jobs: Sequence[QMJob], num_workers: int = 1, omp_num_threads: int | None = None,
             log_level: str = "INFO", progress: bool | None = True) -> Iterable[dict[str, Any]]:
    """Yield job results as they finish; ``num_workers`` > 1 uses a spawn process pool.
    Every worker (or this process) runs with ``omp_num_threads`` OpenMP threads (default:
    :func:`default_threads`). ``progress``: trajectories done / total of the pool
    (:class:`mdkstep.progress.Progress`: True a bar on a terminal, else INFO lines with the ETA;
    None silent); each job's own ``progress`` is its run's (per-trajectory lines, False: log only)."""
    if not jobs:
        return
    threads = omp_num_threads or default_threads(jobs[0].cfg.engine, num_workers)
    if num_workers <= 1 or len(jobs) <= 1:
        # one after the other: each run has its own bar on a terminal; in logs also the batch's line
        whole = progress if len(jobs) > 1 and resolve_mode(progress) == "log" else None
        with limit_threads(threads), Progress(len(jobs), "QM trajectories", "traj", progress=whole) as bar:
            for job in jobs:
                res = run_job(job)
                bar.update(1)
                yield res
        return
    n_procs = min(num_workers, len(jobs))
    if resolve_mode(progress) == "bar":  # on a terminal the pool's bar says it: workers print no lines
        jobs = [replace(j, progress=None) if j.progress is False else j for j in jobs]
    ctx = mp.get_context("spawn")  # no fork after OpenMP/BLAS initialisation
    with ctx.Pool(n_procs, initializer=_worker_init, initargs=(threads, log_level, n_procs)) as pool, \
            Progress(len(jobs), "QM pool", "traj", progress=progress) as bar:
        for res in pool.imap_unordered(run_job, jobs):
            bar.update(1)
            yield res


def summary_line(res: dict[str, Any]) -> str:
    """One line per trajectory for the end-of-run summary."""
    if "error" in res:
        return f"{res['molecule']}:{res['label']}: FAILED: {res['error']}"
    line = (f"{res['molecule']}:{res['label']}: {res['n_frames']} frames, mean T {res['mean_temperature_K']:.1f} "
            f"± {res['std_temperature_K']:.1f} K (target {res['target_temperature_K']:.0f} K)")
    if res.get("steps_per_s") and res.get("force_ms_per_call"):
        line += f", {res['steps_per_s']:.0f} steps/s, {res['force_ms_per_call']:.2f} ms/force call"
    return line
