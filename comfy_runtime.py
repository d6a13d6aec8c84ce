"""Finding and importing the ComfyUI that the pack sits in (or ``COMFYUI_PATH``, or a release that
``tests/host/prepare.sh`` unpacked into ``.hosts/``) as a library, for the trainer, the evaluator,
the benchmarks and the tests.

The pack has one identity per process. Inside ComfyUI it is the package ComfyUI's loader names
after the pack's folder, and its modules import each other relatively. The commands (``python -m
training.train_adapter``, ``python -m evaluation.evaluate``, ...) run from the pack's folder, where
``adapters``, ``training`` and ``evaluation`` are top-level packages; when such a process also
needs the nodes, :func:`load_pack` loads them so that their ``..adapters`` is that same
``adapters`` (one module, one ``PEAError``), not a second copy.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent
PACK_MODULE = "comfyui_pea_diffusion"
PREPARED = PACK_ROOT / ".hosts"
"""Where tests/host/prepare.sh unpacks the ComfyUI source archives (README, "Run it")."""


def version_key(version: str) -> tuple[int, ...]:
    """'0.10.0' -> (0, 10, 0), for ordering releases (non-numeric parts sort first)."""
    return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))


def newest_prepared() -> Path | None:
    """The newest ComfyUI release unpacked into ``.hosts/`` (ComfyUI-v<version>), or None."""
    trees = [p for p in PREPARED.glob("ComfyUI-v*") if (p / "main.py").is_file()]
    return max(trees, key=lambda p: version_key(p.name.removeprefix("ComfyUI-v")), default=None)


def find_comfyui() -> tuple[Path | None, str]:
    """(ComfyUI folder or None, where it came from or why there is none)."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        path = Path(env).expanduser().resolve()
        if (path / "main.py").is_file() and (path / "comfy").is_dir():
            return path, f"COMFYUI_PATH={path}"
        return None, f"COMFYUI_PATH={env} is not a ComfyUI checkout (no main.py and comfy/)"
    parent = PACK_ROOT.parent.parent
    if PACK_ROOT.parent.name == "custom_nodes" and (parent / "main.py").is_file():
        return parent, f"the pack sits in {parent / 'custom_nodes'}"
    prepared = newest_prepared()
    if prepared is not None:
        return prepared, f"{prepared}, the newest release tests/host/prepare.sh unpacked"
    return None, ("no ComfyUI: set COMFYUI_PATH to a ComfyUI checkout, install the pack in ComfyUI/custom_nodes, "
                  "or run tests/host/prepare.sh beside ComfyUI source archives in ../shared/comfyui")


def import_comfy(cpu: bool | None = None) -> Path:
    """Put ComfyUI first on ``sys.path`` and import its model management.

    ``cpu``: force the CPU (default: when CUDA is unavailable). ComfyUI's own ``nodes`` module
    must win over this pack's ``nodes/`` package, hence ``sys.path[0]``.
    """
    path, why = find_comfyui()
    if path is None:
        raise RuntimeError(why)
    if sys.path[:1] != [str(path)]:
        sys.path.insert(0, str(path))
    import torch

    import comfy.cli_args

    if cpu if cpu is not None else not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True
        comfy.cli_args.args.use_pytorch_cross_attention = True  # SDPA: faster than sub-quadratic on CPU
    import comfy.model_management  # noqa: F401  (reads args once, on first import)
    import nodes  # noqa: F401

    if Path(sys.modules["nodes"].__file__).parent != path:
        raise RuntimeError(f"'nodes' was imported from {sys.modules['nodes'].__file__}, not from ComfyUI at {path}")
    return path


SHARED_PACKAGES = ("adapters",)
"""The pack's packages the nodes import (``from ..adapters import ...``)."""


def share_packages(pack) -> None:
    """Make ``pack.adapters`` (and each of its modules) the very module this process imports as
    ``adapters``, so that an error the nodes raise is the class the commands catch."""
    for package in SHARED_PACKAGES:
        setattr(pack, package, importlib.import_module(package))
        for info in pkgutil.walk_packages(getattr(pack, package).__path__, f"{package}."):
            importlib.import_module(info.name)
    for name in [n for n in sys.modules if n.split(".")[0] in SHARED_PACKAGES]:
        sys.modules.setdefault(f"{pack.__name__}.{name}", sys.modules[name])


def load_pack():
    """Import the pack the way ComfyUI's custom-node loader does (a package from its folder), once,
    sharing :data:`SHARED_PACKAGES` with this process; needs :func:`import_comfy` first. Its
    ``NODE_CLASS_MAPPINGS`` are the pack's nodes, registered with ComfyUI's (as its loader does),
    so that ComfyUI's executor runs them."""
    if PACK_MODULE in sys.modules:
        return sys.modules[PACK_MODULE]
    spec = importlib.util.spec_from_file_location(PACK_MODULE, PACK_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(PACK_ROOT)])
    module = importlib.util.module_from_spec(spec)
    share_packages(module)
    sys.modules[PACK_MODULE] = module
    spec.loader.exec_module(module)
    import nodes

    nodes.NODE_CLASS_MAPPINGS.update(module.NODE_CLASS_MAPPINGS)
    nodes.NODE_DISPLAY_NAME_MAPPINGS.update(module.NODE_DISPLAY_NAME_MAPPINGS)
    return module
