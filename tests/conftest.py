"""Shared fixtures: tiny stand-in encoders built once per test session; which ComfyUI release
this session's host tests run on (tests/host/releases.py), reported in the header and summary."""
import os

import pytest

from tests.standins import encoders as standins
from tests.host import releases


def pytest_configure(config):
    config.pea_release = releases.session_release()
    config.pea_release_results = []  # summary lines of the sub-runs (tests/host/test_releases.py)
    if config.pea_release is not None and config.pea_release.extras is not None:
        releases.use_in_this_process(config.pea_release)


def pytest_report_header(config):
    release = config.pea_release
    here = f"ComfyUI {release.version} at {release.path}" if release else "none (the host tests skip, saying why)"
    header = [f"host tests in this process: {here}"]
    if releases.SUBRUN_ENV not in os.environ:
        others = ", ".join(r.version for r in releases.other_releases(release)) or "none"
        header.append(f"host tests in background processes (tests/host/test_releases.py): {others}; "
                      "the slow tier too, when the whole suite runs")
    return header


def pytest_terminal_summary(terminalreporter):
    lines = terminalreporter.config.pea_release_results
    if lines:
        terminalreporter.section("background runs: the slow tier, and the other ComfyUI releases")
        for line in lines:
            terminalreporter.write_line(line)
    cpu = cpu_minutes()
    if cpu:
        terminalreporter.write_line(f"CPU time of this process: {cpu[0]:.1f} min; of the processes it waited for "
                                    f"(servers, commands, background runs): {cpu[1]:.1f} min")


def cpu_minutes() -> tuple[float, float] | None:
    """(this process, its waited-for children) user + system CPU minutes; None where the OS does
    not count them (Windows). What the suite's time budget is made of, per process."""
    try:
        import resource
    except ImportError:
        return None
    return tuple((u.ru_utime + u.ru_stime) / 60 for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                          resource.getrusage(resource.RUSAGE_CHILDREN)))


@pytest.fixture(scope="session")
def encoder_dirs(tmp_path_factory):
    """kind -> folder holding a tiny stand-in of that encoder family, in its real layout."""
    root = tmp_path_factory.mktemp("language_clip")
    dirs = {kind: make(root / kind) for kind, make in standins.ENCODER_MAKERS.items()}
    for model_type in ("mt5", "umt5"):
        dirs[model_type] = standins.make_t5(root / model_type, model_type=model_type)
    return dirs
