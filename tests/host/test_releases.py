"""The host tests on every other ComfyUI release: one pytest sub-process per release prepared from
../shared/comfyui/ (tests/host/releases.py), the slow tier left out (it runs in this process, on
the session's release), this session's stand-in model files reused.

The sub-runs start in the background as soon as this session has written the stand-ins (the first
host test), so they run beside this process's own tests (each process waits on its ComfyUI server
much of the time); the tests here, sorted last, wait for them. A sub-run passes only with exit
status 0: failures, errors and "no tests ran" (5) fail here, with the sub-run's output (kept in
test-artifacts/releases/)."""
from __future__ import annotations

import re

import pytest

from tests.host import releases


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


def test_host_tests_pass_on_release(release, release_runs, request):
    code, out = release_runs[release.version].result()
    print(out)
    lines = out.strip().splitlines()
    summary = lines[-1] if lines else "(no output)"
    skips = [line for line in lines if line.startswith("SKIPPED")]
    results = request.config.pea_release_results
    results.append(f"ComfyUI {release.version} ({release.path}): {summary.strip('= ')}")
    results.extend(f"    {line}" for line in skips)
    assert code == 0, f"host tests on ComfyUI {release.version} exited with {code}:\n" + "\n".join(lines[-60:])
    assert re.search(r"\d+ passed", summary), summary
