"""The host tests on every other ComfyUI release: one pytest sub-process per release prepared from
../shared/comfyui/ (tests/host/releases.py), the slow tier left out (it runs in this process, on
the session's release), this session's stand-in model files reused. A sub-run passes only with exit
status 0: failures, errors and "no tests ran" (5) fail here, with the sub-run's output (also kept
in test-artifacts/releases/)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from tests.host import releases

LOGS = releases.PACK_ROOT / "test-artifacts" / "releases"
SUBRUN_TIMEOUT = 1800
"""Seconds before a sub-run counts as hung and is killed with the ComfyUI servers it started."""


def pytest_generate_tests(metafunc):
    if "release" not in metafunc.fixturenames:
        return
    session = metafunc.config.pea_release
    params = [pytest.param(r, id=r.version) for r in releases.other_releases(session)]
    _, missing = releases.archived_releases()
    params += [pytest.param(None, id=f"missing{n}", marks=pytest.mark.skip(reason=why)) for n, why in enumerate(missing)]
    if not params:
        tested = f"ComfyUI {session.version} is tested in this process" if session else "no ComfyUI here"
        found = "holds no other archive" if releases.ARCHIVES.is_dir() else "does not exist"
        why = f"no other ComfyUI release to test ({tested}): {releases.ARCHIVES} {found}"
        params = [pytest.param(None, id="none", marks=pytest.mark.skip(reason=why))]
    metafunc.parametrize("release", params)


@pytest.fixture(scope="module")
def stand_ins(request):
    """This session's base directory, whose model files the sub-runs link (None: each writes its own)."""
    try:
        return request.getfixturevalue("base_dir")
    except pytest.skip.Exception:  # no ComfyUI in this process
        return None


def run_host_tests(release: releases.Release, stand_ins=None) -> tuple[int, str]:
    """(exit status, output) of ``pytest tests/host -m "not slow"`` on ``release``, in its own process group."""
    env = {**os.environ, "COMFYUI_PATH": str(release.path), "PYTHONPATH": release.pythonpath(),
           releases.SUBRUN_ENV: release.version}
    if stand_ins is not None:
        env[releases.STANDINS_ENV] = str(stand_ins)
    cmd = [sys.executable, "-m", "pytest", "tests/host", "--ignore", __file__, "-m", "not slow", "-q", "-rfEs",
           "-p", "no:cacheprovider"]
    proc = subprocess.Popen(cmd, cwd=releases.PACK_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=SUBRUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and the ComfyUI servers it started
        out, _ = proc.communicate()
        out += f"\n[killed after {SUBRUN_TIMEOUT} s]"
    return proc.returncode, out


def test_host_tests_pass_on_release(release, stand_ins, request):
    code, out = run_host_tests(release, stand_ins)
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / f"ComfyUI-{release.version}.log").write_text(out, encoding="utf-8")
    print(out)
    lines = out.strip().splitlines()
    summary = lines[-1] if lines else "(no output)"
    skips = [line for line in lines if line.startswith("SKIPPED")]
    results = request.config.pea_release_results
    results.append(f"ComfyUI {release.version} ({release.path}): {summary.strip('= ')}")
    results.extend(f"    {line}" for line in skips)
    assert code == 0, f"host tests on ComfyUI {release.version} exited with {code}:\n" + "\n".join(lines[-60:])
    assert re.search(r"\d+ passed", summary), summary
