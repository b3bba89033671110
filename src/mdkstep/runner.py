"""The one resumable chunked run loop: frames -> chunks -> checkpoint -> resume check -> finalize.

Used by the MM baselines (:func:`mdkstep.baselines.openmm_md.run_trajectory`), the QM baselines
(:func:`mdkstep.baselines.ase_md.run_qm_trajectory`) and the hybrid (:func:`mdkstep.hybrid.run_hybrid`).
Each wraps its dynamics in a :class:`Stepper`; this module owns the files:

- an exclusive lock per output (``<lock>`` holds the owner's PID; a dead owner's lock is taken
  over with a message), so two writers never mix their frames;
- the frames of each output stream to ``<out>.parts/chunk_NNNNN.npz``
  (:class:`~mdkstep.trajectory.ChunkedTrajectoryWriter`);
- after every chunk ONE atomic file commits the resume state: the stepper's state arrays plus
  a JSON manifest (fingerprint, chunks and frames done). A kill can never leave a state that
  disagrees with the chunks, and the frame count, not the time stamps, proves continuity;
- on resume the fingerprint (everything that defines the run: config, seed, inputs' content
  hashes, model checkpoint hash) must match, else a one-line error says what changed;
- leftovers of a killed run (chunks after the last commit, a half-assembled final file) are
  removed before the run continues.

Frame arrays follow the trajectory schema (nm, nm/ps, kJ/mol, K, ps).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np

from mdkstep.progress import Progress
from mdkstep.trajectory import ChunkedTrajectoryWriter
from mdkstep.utils import LOG, MdkstepError, as_plain_json, atomic_path

#: version of the resume-state file layout (manifest key ``format``)
STATE_FORMAT = 1


class Stepper(Protocol):
    """What the run loop needs from a dynamics engine.

    ``start()`` prepares a fresh run (minimisation, velocities, equilibration); ``advance(first,
    n)`` produces frames ``first .. first+n-1`` and returns, per output, a dict of frame arrays
    (leading axis n; keys of :data:`mdkstep.trajectory.FRAME_KEYS`); ``get_state()`` returns
    the complete dynamical state as NumPy arrays (RNG state included) and ``set_state`` restores
    it, so that a resumed run continues bit for bit."""

    def start(self) -> None: ...

    def advance(self, first_frame: int, n_frames: int) -> Sequence[Mapping[str, np.ndarray]]: ...

    def get_state(self) -> dict[str, np.ndarray]: ...

    def set_state(self, state: Mapping[str, np.ndarray]) -> None: ...


@dataclass
class RunResult:
    """What one session of :func:`run_chunked` did."""

    n_frames: int  #: frames of the finished trajectory (per output)
    resumed_at_chunk: int  #: 0 for a fresh run
    frames_this_session: int
    manifest: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- fingerprints

def content_hash(*parts: Any) -> str:
    """SHA-256 (hex, 16 chars) of arrays / bytes / strings / JSON-able objects, in order."""
    h = hashlib.sha256()
    for p in parts:
        if p is None:
            h.update(b"\x00none")
        elif isinstance(p, (bytes, bytearray)):
            h.update(bytes(p))
        elif isinstance(p, str):
            h.update(p.encode())
        elif isinstance(p, np.ndarray) or isinstance(p, (list, tuple)) and p and isinstance(p[0], np.ndarray):
            for a in (p if isinstance(p, (list, tuple)) else [p]):
                a = np.ascontiguousarray(a)
                h.update(f"{a.dtype.str}{a.shape}".encode())
                h.update(a.tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


#: config keys that say how or where a run computes, not what it computes: a finished output
#: is not refused when only these differ (nor when the number of NVE windows does)
RUN_ONLY_KEYS = frozenset({"config.chunk_frames", "config.omp_num_threads", "config.max_memory_mb",
                           "config.use_gpu", "config.platform", "config.nve_windows"})


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a trajectory NPZ, without loading its frames."""
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["metadata"]))
    except Exception as e:  # noqa: BLE001 (any unreadable file is the same one-line error)
        raise MdkstepError(f"{path}: exists but its metadata cannot be read ({type(e).__name__}); "
                           f"pass --overwrite to redo it") from None
    if not isinstance(meta, dict):
        raise MdkstepError(f"{path}: exists but its metadata is not a JSON object; pass --overwrite to redo it")
    return meta


def check_finished(path: Path, expected: Mapping[str, Any],
                   remedy: str = "pass --overwrite to redo it, or write to another --out") -> None:
    """Refuse a finished trajectory whose recorded settings differ from this run's.

    ``expected``: the metadata this run would write for ``path`` (config, seed, label, molecule,
    ...; the settings of the fingerprint a partial run is resumed against). Keys the file does
    not record (older files) and :data:`RUN_ONLY_KEYS` are not compared. A difference is a
    one-line :class:`MdkstepError` naming the file and the keys (``remedy`` says what to do)."""
    old = _flatten(read_metadata(path))
    new = {k: v for k, v in _flatten(json.loads(json.dumps(dict(expected), default=str))).items()
           if k in old and k not in RUN_ONLY_KEYS}
    changes = fingerprint_changes({k: old[k] for k in new}, new)
    if changes:
        raise MdkstepError(f"{path}: finished with other settings ({'; '.join(changes)}); {remedy}")


def normalize(obj: Any) -> Any:
    """``obj`` as plain JSON types (tuples -> lists, NumPy scalars -> Python, Paths -> str)."""
    return as_plain_json(obj)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def fingerprint_changes(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 3) -> list[str]:
    """``'key: old -> new'`` for each differing (dotted) key, at most ``limit`` (+ a count)."""
    a, b = _flatten(normalize(dict(old))), _flatten(normalize(dict(new)))
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k, "<unset>") != b.get(k, "<unset>")]
    out = [f"{k}: {_short(a.get(k, '<unset>'))} -> {_short(b.get(k, '<unset>'))}" for k in keys[:limit]]
    if len(keys) > limit:
        out.append(f"and {len(keys) - limit} more")
    return out


def _short(v: Any, n: int = 40) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


# ------------------------------------------------------------------------------------ lock

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_owner(path: Path) -> tuple[int | None, str | None]:
    """(PID, host) written in a lock file; (None, None) when unreadable."""
    try:
        words = path.read_text().split()
        return int(words[0]), (words[1] if len(words) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None, None


def _read_pid(path: Path) -> int | None:
    return _read_owner(path)[0]


@contextlib.contextmanager
def output_lock(path: str | Path, what: str) -> Iterator[Path]:
    """Hold an exclusive lock file ``path`` (content: this PID and host) while the block runs.

    A lock of a live process is a one-line error; a lock of a dead process (or an unreadable
    one) is taken over with a warning. ``what`` names the output in messages."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            pid, host = _read_owner(path)
            if host is not None and host != socket.gethostname():  # another machine: its PID cannot be checked
                raise MdkstepError(f"{what} is being written by process {pid} on {host} (lock {path}); wait for it "
                                   "to finish, or delete the lock if that process is gone") from None
            if pid is not None and pid != os.getpid() and _pid_alive(pid):
                raise MdkstepError(f"{what} is being written by process {pid} (lock {path}); wait for it to finish, "
                                   "or delete the lock if that process is not ours") from None
            stale = path.with_name(f"{path.name}.stale.{os.getpid()}")
            try:
                os.rename(path, stale)  # only one contender wins the rename
            except FileNotFoundError:
                continue
            stale.unlink(missing_ok=True)
            LOG.warning("%s: taking over the stale lock of process %s (no longer running)", path, pid)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()} {socket.gethostname()}\n")
        break
    else:
        raise MdkstepError(f"{path}: could not take the lock for {what}")
    try:
        yield path
    finally:
        if _read_pid(path) == os.getpid():
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------------- resume state

def pack_json(obj: Any) -> np.ndarray:
    """A JSON-able object as a 0-d string array (for state NPZ files)."""
    return np.array(json.dumps(normalize(obj)))


def unpack_json(arr: np.ndarray) -> Any:
    return json.loads(str(arr))


def write_state(path: Path, state: Mapping[str, np.ndarray], manifest: Mapping[str, Any]) -> None:
    """Commit ``state`` + ``manifest`` in one atomic rename (the only resume record)."""
    arrays = {f"state__{k}": np.asarray(v) for k, v in state.items()}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, manifest=pack_json(manifest), **arrays)


def read_state(path: Path, hint: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(manifest, state arrays) of a resume file; a damaged file is a one-line error."""
    try:
        with np.load(path, allow_pickle=False) as z:
            manifest = unpack_json(z["manifest"])
            state = {k[len("state__"):]: z[k] for k in z.files if k.startswith("state__")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise MdkstepError(f"{path}: unreadable checkpoint ({_first_line(e)}); {hint}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STATE_FORMAT:
        raise MdkstepError(f"{path}: not a checkpoint of this md-kstep version (no manifest format "
                           f"{STATE_FORMAT}); {hint}")
    return manifest, state


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:200]


def clean_leftovers(writers: Sequence[ChunkedTrajectoryWriter], state_path: Path) -> None:
    """Remove what a killed session of this run left behind: half-assembled final files and
    temporary files of the atomic writes (hidden ``.<name>.*`` next to outputs and state)."""
    for w in writers:
        shutil.rmtree(w.parts / "assemble", ignore_errors=True)
        _remove_temps(w.out_path.parent, f".{w.out_path.name}.*")
        _remove_temps(w.parts, ".*")  # temporary chunk files
    _remove_temps(state_path.parent, f".{state_path.name}.*")


def _remove_temps(folder: Path, pattern: str) -> None:
    """Delete the files in ``folder`` matching ``pattern`` (we hold the lock: they are ours)."""
    if not folder.is_dir():
        return
    for p in folder.glob(pattern):
        if p.is_file():
            LOG.info("removing leftover %s of an interrupted run", p)
            p.unlink(missing_ok=True)


def _check_chunks(writers: Sequence[ChunkedTrajectoryWriter], done_chunks: int, frames_done: int,
                  state_path: Path, hint: str) -> None:
    """Every committed chunk is on disk and they hold exactly ``frames_done`` frames."""
    for w in writers:
        total = 0
        for i in range(done_chunks):
            p = w.chunk_path(i)
            try:
                with np.load(p) as z:
                    total += int(z["positions"].shape[0])
            except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
                raise MdkstepError(f"{p}: committed chunk {i} is missing or unreadable ({_first_line(e)}); "
                                   f"{hint}") from None
        if total != frames_done:
            raise MdkstepError(f"{w.parts}: the chunks hold {total} frames but {state_path} committed {frames_done}; "
                               f"{hint}")


def _published(w: ChunkedTrajectoryWriter) -> bool:
    """True when ``w``'s final file is in place and its chunks are gone (it was finalized)."""
    return w.out_path.is_file() and not w.chunk_files()


def tidy_finished(out_path: str | Path, state_path: str | Path | None = None) -> None:
    """Remove what a session killed right after publishing ``out_path`` left beside it: the
    ``.parts`` folder (with its resume file), ``state_path``, temporaries and the stale lock.
    Call it when a finished output is skipped; it does nothing while a live process holds the lock."""
    out = Path(out_path)
    lock, parts = lock_path_for(out), out.with_name(out.name + ".parts")
    extra = [Path(state_path)] if state_path is not None else []
    if not out.is_file() or not (parts.exists() or lock.exists() or any(p.exists() for p in extra)):
        return
    try:
        with output_lock(lock, str(out)):
            if parts.exists():
                LOG.info("removing %s, left by a run killed after it published %s", parts, out.name)
                shutil.rmtree(parts, ignore_errors=True)
            for p in extra:
                p.unlink(missing_ok=True)
            _remove_temps(out.parent, f".{out.name}.*")
    except MdkstepError:  # another process is writing it: not ours to tidy
        return


# ---------------------------------------------------------------------------- the loop

def run_chunked(stepper: Stepper, writers: Sequence[ChunkedTrajectoryWriter], *, n_frames: int, chunk_frames: int,
                state_path: str | Path, fingerprint: Mapping[str, Any], lock_path: str | Path | None = None,
                resume: bool = True, restart_hint: str | None = None, label: str = "run",
                progress: bool | None = False, progress_unit: tuple[str, int] = ("frame", 1)) -> RunResult:
    """Run (or resume) ``n_frames`` frames per writer in chunks of ``chunk_frames``.

    ``state_path``: the resume file (deleted when the run is finished); ``fingerprint``: a
    JSON-able dict of everything that defines the run (compared on resume); ``lock_path``:
    the lock file (default ``<state_path>.lock``); ``resume`` False discards a partial run;
    ``restart_hint`` ends every refusal (default: delete the resume file); ``progress``:
    :class:`mdkstep.progress.Progress` (True: a bar on a terminal, else INFO lines with the
    ETA every 30 s; False: those lines only; None: silent); ``progress_unit`` (name, units per
    frame) for it. Writers are finalized at the end."""
    state_path = Path(state_path)
    lock_path = Path(lock_path) if lock_path else state_path.with_name(state_path.name + ".lock")
    hint = restart_hint or f"delete {state_path} to start over"
    if n_frames < 1:
        raise MdkstepError(f"{writers[0].out_path}: the run has no frames")
    fp = normalize(dict(fingerprint))
    n_chunks = -(-n_frames // chunk_frames)
    with output_lock(lock_path, str(writers[0].out_path)):
        clean_leftovers(writers, state_path)
        done = _resume_or_start(stepper, writers, state_path, fp, n_frames, chunk_frames, resume, hint, label)
        frames = _run_chunks(stepper, writers, state_path, fp, n_frames, chunk_frames, done, label, progress,
                             progress_unit)
        for w in writers:
            if done == n_chunks and _published(w):  # a session killed after publishing it: keep it
                shutil.rmtree(w.parts, ignore_errors=True)
                continue
            w.finalize(n_frames=n_frames)
        state_path.unlink(missing_ok=True)
    return RunResult(n_frames=n_frames, resumed_at_chunk=done, frames_this_session=frames,
                     manifest={"fingerprint": fp, "n_chunks": n_chunks})


def _resume_or_start(stepper: Stepper, writers: Sequence[ChunkedTrajectoryWriter], state_path: Path,
                     fp: dict[str, Any], n_frames: int, chunk_frames: int, resume: bool, hint: str,
                     label: str) -> int:
    """Restore the committed state (returns its chunk count) or start fresh (returns 0)."""
    if resume and state_path.is_file():
        manifest, state = read_state(state_path, hint)
        changes = fingerprint_changes(manifest.get("fingerprint", {}), fp)
        if changes:
            raise MdkstepError(f"{state_path}: the partial run has other settings ({'; '.join(changes)}); {hint}")
        if manifest.get("n_frames") != n_frames or manifest.get("chunk_frames") != chunk_frames:
            raise MdkstepError(f"{state_path}: the partial run has other settings (n_frames {manifest.get('n_frames')}"
                               f" -> {n_frames}, chunk_frames {manifest.get('chunk_frames')} -> {chunk_frames}); {hint}")
        done, frames_done = int(manifest["done_chunks"]), int(manifest["frames_done"])
        finished = done == -(-n_frames // chunk_frames)
        _check_chunks([w for w in writers if not (finished and _published(w))], done, frames_done, state_path, hint)
        for w in writers:
            w.discard_chunks_from(done)
        stepper.set_state(state)
        LOG.info("%s: resuming at chunk %d/%d (frame %d)", label, done, -(-n_frames // chunk_frames), frames_done)
        return done
    state_path.unlink(missing_ok=True)
    for w in writers:
        w.discard_chunks_from(0)
    stepper.start()
    return 0


def _run_chunks(stepper: Stepper, writers: Sequence[ChunkedTrajectoryWriter], state_path: Path,
                fp: dict[str, Any], n_frames: int, chunk_frames: int, done: int, label: str, progress: bool | None,
                progress_unit: tuple[str, int]) -> int:
    """Chunks ``done ..``: advance, flush every writer, commit the state. Returns frames run."""
    unit, per = progress_unit
    n_chunks = -(-n_frames // chunk_frames)
    ran = 0
    out = writers[0].out_path if writers else None
    if out is not None and Path(out).name not in label:  # log lines name what is being written
        label = f"{label} [{Path(out).name}]"
    with Progress(n_frames * per, label, unit, initial=min(n_frames, done * chunk_frames) * per, progress=progress,
                  leave=False) as bar:
        for chunk in range(done, n_chunks):
            first, last = chunk * chunk_frames, min(n_frames, (chunk + 1) * chunk_frames)
            blocks = stepper.advance(first, last - first)
            if len(blocks) != len(writers):
                raise MdkstepError(f"{label}: the stepper returned {len(blocks)} outputs for {len(writers)} writers")
            for w, block in zip(writers, blocks):
                w.append_block(**block)
                w.flush(chunk)
            ran += last - first
            bar.update((last - first) * per)
            write_state(state_path, stepper.get_state(),
                        {"format": STATE_FORMAT, "fingerprint": fp, "done_chunks": chunk + 1, "frames_done": last,
                         "n_frames": n_frames, "chunk_frames": chunk_frames})
    return ran


def lock_path_for(out_path: str | Path) -> Path:
    """The lock file of an output: ``<out>.lock`` beside it."""
    out = Path(out_path)
    return out.with_name(out.name + ".lock")


def is_leftover(path: str | Path) -> bool:
    """True for files a reader must ignore: hidden temporaries, checkpoints, locks, parts."""
    p = Path(path)
    return (p.name.startswith(".") or p.name.endswith((".hybrid_ckpt.npz", ".lock", ".parts"))
            or p.parent.name.endswith(".parts"))


__all__ = ["Stepper", "RunResult", "run_chunked", "content_hash", "fingerprint_changes",
           "output_lock", "lock_path_for", "tidy_finished", "pack_json", "unpack_json", "write_state", "read_state", "is_leftover"]
