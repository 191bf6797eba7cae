"""Shared fixtures; makes Prefect hermetic before anything imports it (DESIGN.md, Habits).

Prefect reads its environment once, at import: so the variables are set here, at the top of
the root conftest, which pytest imports before any test module.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

# --- hermetic Prefect: before any `import prefect` -------------------------------------------
_PREFECT_HOME = tempfile.mkdtemp(prefix="crav-tests-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_UI_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PREFECT_API_KEY", None)
os.environ.pop("PREFECT_PROFILE", None)
# ----------------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECK_OUTPUTS = REPO_ROOT.parent / "shared" / "tools" / "check_outputs.py"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test harness (temporary database + API server) for the whole session.

    Started only when a test asks for it (it costs ~8 s). Flow heartbeats are disabled:
    they cost ~1 s per flow call.
    """
    from prefect.settings import temporary_settings
    from prefect.settings.models.flows import FlowsSettings
    from prefect.testing.utilities import prefect_test_harness

    updates: dict[str, object] = {}
    if "heartbeat_frequency" in FlowsSettings.model_fields:  # present in prefect 3.9.1
        updates["flows.heartbeat_frequency"] = None
    with prefect_test_harness(), temporary_settings(updates=updates):
        yield


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The project folder (holding pyproject.toml)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def realdata(repo_root: Path) -> Path:
    """``../shared/realdata``; the test fails (it is not skipped) when the folder is absent."""
    path = repo_root.parent / "shared" / "realdata"
    if not path.is_dir():
        pytest.fail(
            f"real-data folder {path} is missing: the real-data tests need ../shared/realdata "
            "beside the project folder (see README.md, 'Tests')",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def load_benchmark(repo_root: Path) -> Callable[[str], ModuleType]:
    """Import ``benchmarks/<name>.py`` as a module (the real-data tests reuse the benchmarks' code)."""

    def load(name: str) -> ModuleType:
        if name in sys.modules:
            return sys.modules[name]
        path = repo_root / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None, path
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def check_outputs() -> Callable[..., str]:
    """Run ``../shared/tools/check_outputs.py`` on an output folder and assert it finds nothing.

    Usage: ``check_outputs(out_dir)`` or ``check_outputs(out_dir, registry=path)``; returns
    the checker's output.
    """
    if not CHECK_OUTPUTS.is_file():
        pytest.fail(f"the output checker {CHECK_OUTPUTS} is missing", pytrace=False)

    def run(output_dir: Path, registry: Path | None = None) -> str:
        cmd = [sys.executable, str(CHECK_OUTPUTS), str(output_dir)]
        if registry is not None:
            cmd += ["--registry", str(registry)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"check_outputs.py found problems in {output_dir}:\n{output}"
        return output

    return run
