"""Keeping runs apart: one run at a time in a folder (a lock file), a new run does not start over a
previous run's files unless told to (``--resume`` continues it, ``--overwrite`` clears it), and the
temp files of interrupted writes are cleaned up at start. Only rank 0 calls these, before any
process writes.

The lock, ``<output>/.pea-run.lock``, is created with ``O_CREAT | O_EXCL`` (atomic on every
system, Windows included), holding the owner's process id, host and start time; it is removed when
the run ends or its process exits. A lock whose process is gone (killed, crashed) is stale: a run on
the same host takes it over. A lock from another host cannot be checked: the message says to delete
it if no run is using the folder.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import re
import secrets
import socket
import time
from pathlib import Path

import psutil

from adapters.errors import PEAError
from adapters.file_format import remove_abandoned_temp_files

from training.runs.files import checkpoints, find_checkpoint

log = logging.getLogger(__name__)

RUN_FILES = ("log.jsonl", "loss.png", "summary.json")
PREVIEW_NAME = re.compile(r"^(step_\d+|final)\.png$")
STALE_AFTER_S = 15 * 60
"""A temp file in a cache folder (which other runs may share) untouched this long is abandoned."""


class RunFolderError(PEAError):
    """The run folder holds another run's files; the message says what to do."""


LOCK_NAME = ".pea-run.lock"


def _this_process() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": psutil.Process().create_time()}


def _read_lock(lock: Path) -> dict | None:
    """The lock's owner, or None while it is being written (or unreadable)."""
    try:
        owner = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _is_stale(owner: dict) -> bool:
    """Whether the process that wrote a lock on this host is gone (its id free, or reused since)."""
    if owner.get("host") != socket.gethostname():
        return False
    try:
        return abs(psutil.Process(owner["pid"]).create_time() - float(owner.get("started", 0))) > 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError, ValueError):
        return not psutil.pid_exists(owner["pid"])


def _take_over(lock: Path, stale: dict) -> None:
    """Remove a stale lock, unless another run replaced it meanwhile (then it is put back)."""
    aside = lock.with_name(f"{LOCK_NAME}.{os.getpid()}.{secrets.token_hex(4)}.stale")
    try:
        os.replace(lock, aside)
    except FileNotFoundError:  # another run took it over first
        return
    if _read_lock(aside) == stale:
        aside.unlink()
        return
    try:  # a fresh lock was moved: give it back without overwriting anything
        os.link(aside, lock)
    finally:
        aside.unlink()


def claim_run_folder(output: Path) -> Path:
    """Claim ``output`` for this process (see the module's notes); RunFolderError while another live
    run holds it. Claiming a folder this process holds already is a no-op."""
    output.mkdir(parents=True, exist_ok=True)
    lock, me = output / LOCK_NAME, _this_process()
    for _ in range(50):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _read_lock(lock)
            if owner == me:
                return lock
            if owner is None:  # being written right now
                time.sleep(0.1)
                continue
            if not _is_stale(owner):
                raise RunFolderError(
                    f"{output} is in use by another run (process {owner['pid']} on {owner.get('host')}); wait for "
                    f"it to finish or choose another --output. If no run is using it, delete {lock}.") from None
            log.warning("%s was left by process %d, which is gone: taking the folder over", lock, owner["pid"])
            _take_over(lock, owner)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        atexit.register(release_run_folder, output)
        return lock
    raise RunFolderError(f"{output}: its lock {lock} is unreadable or keeps changing; if no run is using the "
                         f"folder, delete it")


def release_run_folder(output: Path) -> None:
    """Remove the lock of ``output`` if this process holds it."""
    lock = output / LOCK_NAME
    if _read_lock(lock) == _this_process():
        lock.unlink(missing_ok=True)


def previous_run_files(output: Path, adapter_name: str) -> list[Path]:
    """The files of a previous run in ``output``: only what the trainer writes there."""
    names = {adapter_name, *RUN_FILES}
    try:  # the adapter an earlier run wrote under another name
        names.add(Path(json.loads((output / "summary.json").read_text(encoding="utf-8"))["adapter"]).name)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = [output / name for name in sorted(names) if (output / name).is_file()]
    found += [path for _, path in checkpoints(output / "checkpoints")]
    if (output / "previews").is_dir():
        found += sorted(p for p in (output / "previews").iterdir() if PREVIEW_NAME.match(p.name) and p.is_file())
    return found


def resumes_here(output: Path, resume: Path | None) -> bool:
    """Whether ``resume`` names a checkpoint of the run in ``output``."""
    if resume is None:
        return False
    folder = find_checkpoint(resume).resolve().parent
    return folder in (output.resolve(), (output / "checkpoints").resolve())


def check_run_folder(output: Path, adapter_name: str, resume: Path | None = None, overwrite: bool = False) -> None:
    """Refuse to start a new run over a previous run's files (RunFolderError) unless the run
    resumes from a checkpoint in that folder or ``overwrite`` is set."""
    if overwrite or resumes_here(output, resume):
        return
    found = previous_run_files(output, adapter_name)
    if found:
        shown = ", ".join(str(p.relative_to(output)) for p in found[:4]) + (" ..." if len(found) > 4 else "")
        elsewhere = f" (--resume {resume} is not a checkpoint of this folder)" if resume else ""
        raise RunFolderError(
            f"{output} holds a previous run ({shown}){elsewhere}. Continue it with --resume {output}, choose "
            f"another --output, or pass --overwrite to delete that run's files (other files are left alone).")


def prepare_run_folder(output: Path, adapter_name: str, resume: Path | None = None, overwrite: bool = False,
                       cache_dir: Path | None = None) -> None:
    """Check the folder; with ``overwrite`` (and not resuming here) delete the previous run's
    files; delete temp files of interrupted writes in the run folder and, when abandoned, in the
    cache folder. The folder is claimed first (:func:`claim_run_folder`)."""
    claim_run_folder(output)
    check_run_folder(output, adapter_name, resume, overwrite)
    if overwrite and not resumes_here(output, resume):
        old = previous_run_files(output, adapter_name)
        for path in old:
            path.unlink()
        for folder in (output / "checkpoints", output / "previews"):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if old:
            log.warning("--overwrite: deleted %d file(s) of the previous run in %s", len(old), output)
    removed = [path for folder in (output, output / "checkpoints", output / "previews")
               for path in remove_abandoned_temp_files(folder)]
    if cache_dir is not None:
        removed += remove_abandoned_temp_files(cache_dir, recursive=True, older_than_s=STALE_AFTER_S)
    if removed:
        log.warning("removed %d temp file(s) left by interrupted writes (%s)", len(removed),
                    ", ".join(str(p) for p in removed[:3]) + (" ..." if len(removed) > 3 else ""))


def check_later_checkpoints(folder: Path, step: int, overwrite: bool) -> None:
    """A run resumed at ``step`` replaces what came after it: refuse (RunFolderError) while
    ``folder`` holds later checkpoints, which a later ``--resume`` would pick, unless
    ``overwrite`` deletes them."""
    later = [path for s, path in checkpoints(folder) if s > step]
    if later and not overwrite:
        raise RunFolderError(
            f"resuming at step {step}, but {folder} holds later checkpoints ({', '.join(p.name for p in later)}) "
            f"that a later --resume would continue instead; resume from the newest, or pass --overwrite to delete them")
    for path in later:
        path.unlink()
