"""The ComfyUI releases the host tests run on.

One pytest process can import one ComfyUI (``comfy`` and ComfyUI's ``nodes`` are imported once), so
the test session runs the host tests in-process on one release — ``COMFYUI_PATH``, the ComfyUI the
pack sits in, or else the newest prepared archive — and ``tests/host/test_releases.py`` runs them in
one pytest sub-process per other release. ``tests/host/prepare.sh`` (README command 2) unpacks the
archives in ``../shared/comfyui/`` into ``.hosts/`` and installs the packages each release pins into
``.hosts/extras-<version>/``, which goes first on ``PYTHONPATH`` for that release.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import NamedTuple
from pathlib import Path

from comfy_runtime import PACK_ROOT, PREPARED, find_comfyui, version_key

HOSTS = PREPARED
ARCHIVES = Path(os.environ.get("COMFYUI_ARCHIVES") or PACK_ROOT.parent / "shared" / "comfyui")
PREPARE = "tests/host/prepare.sh"
SUBRUN_ENV = "PEA_HOST_RELEASE"
"""Set in the environment of a sub-run (tests/host/test_releases.py): the release it tests."""
STANDINS_ENV = "PEA_HOST_STANDINS"
"""Set for a sub-run: a base directory whose stand-in model files it links instead of writing its
own (model files do not depend on the release that reads them)."""
LOGS = PACK_ROOT / "test-artifacts" / "releases"
SUBRUN_TIMEOUT = 1800
"""Seconds before a sub-run counts as hung and is killed with the ComfyUI servers it started."""
USER_PYTHONPATH = os.environ.get("PYTHONPATH", "")
"""PYTHONPATH as the user gave it, before this session put a release's extras first."""


@dataclass(frozen=True)
class Release:
    """A ComfyUI source tree and the folder of packages it pins (None: they are in the environment)."""

    version: str
    path: Path
    extras: Path | None = None

    @property
    def order(self) -> tuple:
        return version_key(self.version)

    def pythonpath(self) -> str:
        """PYTHONPATH for a process that runs this release."""
        return os.pathsep.join(p for p in (str(self.extras or ""), USER_PYTHONPATH) if p)


def comfyui_version(path: Path) -> str:
    """The release number a ComfyUI tree declares in comfyui_version.py ('unknown' without one)."""
    version_file = path / "comfyui_version.py"
    found = re.search(r'__version__\s*=\s*"([^"]+)"', version_file.read_text()) if version_file.is_file() else None
    return found.group(1) if found else "unknown"


def archive_version(archive: Path) -> str:
    return archive.name.removeprefix("ComfyUI-v").removesuffix(".tar.gz")


def archived_releases() -> tuple[list[Release], list[str]]:
    """(releases unpacked from the archives by prepare.sh, oldest first; why each other archive is not ready)."""
    ready, missing = [], []
    for archive in sorted(ARCHIVES.glob("ComfyUI-v*.tar.gz")):
        version = archive_version(archive)
        path, extras = HOSTS / f"ComfyUI-v{version}", HOSTS / f"extras-{version}"
        if (path / "main.py").is_file() and extras.is_dir():
            ready.append(Release(version, path, extras))
        else:
            missing.append(f"{archive} is not unpacked into {HOSTS}: run {PREPARE} (README command 2)")
    return sorted(ready, key=lambda r: r.order), missing


def session_release() -> Release | None:
    """The release this pytest process tests in-process: COMFYUI_PATH or the ComfyUI around the pack
    when there is one (its packages are the environment's), else the newest prepared archive (with
    the packages it pins)."""
    path, _ = find_comfyui()
    if path is None:  # COMFYUI_PATH set but not a ComfyUI, or nothing: the host tests skip, saying why
        return None
    ready, _ = archived_releases()
    prepared = [r for r in ready if r.path.resolve() == path.resolve()]
    return prepared[0] if prepared else Release(comfyui_version(path), path)


def use_in_this_process(release: Release) -> None:
    """Point this process, and the servers and workers it starts, at ``release``."""
    os.environ["COMFYUI_PATH"] = str(release.path)
    if release.extras is not None:
        os.environ["PYTHONPATH"] = release.pythonpath()
        sys.path.insert(0, str(release.extras))


def other_releases(session: Release | None) -> list[Release]:
    """The prepared archives other than the session's release (same tree or same version number)."""
    ready, _ = archived_releases()
    if session is None:
        return ready
    return [r for r in ready if r.path.resolve() != session.path.resolve() and r.version != session.version]


SLOW_TIER = "slow"
"""The slow tier's marker."""
ONCE_TIER = "once"
"""The marker of the pack-logic host tests, which run on the session's release only."""
WORLD_PROOF = "tests/host/test_world_proof.py"
WORLD_FLOOR = f"{WORLD_PROOF}::test_reduced_world_proof_keeps_the_pea_student_near_the_teacher"


class Tier(NamedTuple):
    """A background run: ``pytest <paths> -m <marks>``, less ``ignore``; ``stand_ins``: whether its
    tests read the session's stand-in model files (a run that does not starts before they are
    written); ``nice``: how far it stands back for the other test processes (a niceness; POSIX only)."""

    marks: str
    paths: tuple[str, ...] = ("tests/host",)
    ignore: tuple[str, ...] = ()
    stand_ins: bool = True
    nice: int = 0


CPU_BOUND = 10
"""The niceness of the runs that only compute (the slow tier): the processes whose tests wait on a
ComfyUI server or a browser get a core whenever they are ready to run, and these take what is left.
Fair shares made the session's own process, which waits on its server most of the time, the last
to finish, alone on the machine for its last minutes."""
BACKGROUND_TIERS = {"slow-world-proof-sd15": Tier(SLOW_TIER, (f"{WORLD_FLOOR}[sd15]",), stand_ins=False, nice=CPU_BOUND),
                    "slow-world-proof-sdxl": Tier(SLOW_TIER, (f"{WORLD_FLOOR}[sdxl]",), stand_ins=False, nice=CPU_BOUND),
                    "slow": Tier(SLOW_TIER, ignore=(WORLD_PROOF,), nice=CPU_BOUND),
                    "once": Tier(f"{ONCE_TIER} and not {SLOW_TIER}")}
"""The background runs on the session's release in a full session, by name. The world proof's two
floors (SD1.5 and SDXL teachers), the slow tier's longest tests, run in processes of their own
beside the rest of that tier, from the session's start; the pack-logic tests run in another, so
that the session's own process keeps only the unit tests and the host tests every release runs."""
OTHER_RELEASES_TIER = Tier("not slow and not once")
"""What the other releases' sub-runs run: every host test but the slow tier and the pack-logic tests."""


class SubRun:
    """``tier`` on ``release``, in the background in its own process group, its output written to
    test-artifacts/releases/ComfyUI-<version>[-<name>].log."""

    def __init__(self, release: Release, stand_ins: Path | None, tier: Tier = OTHER_RELEASES_TIER, name: str = ""):
        env = {**os.environ, "COMFYUI_PATH": str(release.path), "PYTHONPATH": release.pythonpath(),
               SUBRUN_ENV: release.version, "OMP_NUM_THREADS": "1"}  # beside this session: one thread each
        if stand_ins is not None:
            env[STANDINS_ENV] = str(stand_ins)
        ignored = [arg for path in ("tests/host/test_releases.py", *tier.ignore) for arg in ("--ignore", path)]
        cmd = [sys.executable, "-m", "pytest", *tier.paths, *ignored, "-m", tier.marks, "-q", "-rfEs", "-p", "no:cacheprovider", "--durations=15"]
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log = LOGS / f"ComfyUI-{release.version}{'-' + name if name else ''}.log"
        with open(self.log, "w", encoding="utf-8") as out:
            self.proc = subprocess.Popen(cmd, cwd=PACK_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if tier.nice and hasattr(os, "setpriority"):  # before it starts its servers and workers, which inherit it
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, tier.nice)
        self.started = time.monotonic()

    def result(self) -> tuple[int, str]:
        """(exit status, output), waiting for the run; a run past ``SUBRUN_TIMEOUT`` is killed."""
        try:
            code = self.proc.wait(timeout=max(1.0, SUBRUN_TIMEOUT - (time.monotonic() - self.started)))
            note = ""
        except subprocess.TimeoutExpired:
            self.stop()
            code, note = self.proc.wait(), f"\n[killed after {SUBRUN_TIMEOUT} s]"
        return code, self.log.read_text(encoding="utf-8", errors="replace") + note

    def stop(self) -> None:
        """Kill the run, its pytest and the ComfyUI servers it started, if it still runs."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
