"""The background runs of a full test session (tests/host/conftest.py, ``release_runs``): the host
tests on every other ComfyUI release prepared from ../shared/comfyui/ (tests/host/releases.py;
without the slow tier and the pack-logic tests, which run on the session's release), and the slow
and pack-logic ('once') tiers on the session's own release (a process each, releases.BACKGROUND_TIERS). This session's stand-in model files are reused.

They start in the background at the first host test (those that read the stand-in model files once
this session has written them), so they run beside this process's own tests; the tests here, sorted last, wait for them. A
run passes only with exit status 0: failures, errors and "no tests ran" (5) fail here, with the
run's output (kept in test-artifacts/releases/)."""
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


def check_run(run: releases.SubRun, label: str, results: list[str]) -> None:
    """The run passed (exit 0, tests ran); its summary and skip reasons go to the session summary."""
    code, out = run.result()
    print(out)
    lines = out.strip().splitlines()
    summary = lines[-1] if lines else "(no output)"
    results.append(f"{label}: {summary.strip('= ')}")
    results.extend(f"    {line}" for line in lines if line.startswith("SKIPPED"))
    assert code == 0, f"{label} exited with {code}:\n" + "\n".join(lines[-60:])
    assert re.search(r"\d+ passed", summary), summary


def test_host_tests_pass_on_release(release, release_runs, request):
    check_run(release_runs[release.version], f"ComfyUI {release.version} ({release.path})",
              request.config.pea_release_results)


@pytest.mark.parametrize("name", list(releases.BACKGROUND_TIERS))
def test_tier_passes_on_this_release(name, release_runs, request):
    if name not in release_runs:
        pytest.skip("the slow and once tiers run in this process, or are not selected")
    release = request.config.pea_release
    check_run(release_runs[name], f"{name} on ComfyUI {release.version}, beside this session",
              request.config.pea_release_results)
