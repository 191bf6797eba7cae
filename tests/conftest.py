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


def free_port() -> int:
    """A TCP port nobody listens on now, on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200; fail with the reason when ``timeout_s`` passes or ``proc`` dies."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process serving {url} exited with code {proc.returncode}", pytrace=False)
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout_s:.0f} s", pytrace=False)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real Prefect server (``prefect server start``, SQLite) on 127.0.0.1, for the whole session.

    Yields the environment a client process needs (``PREFECT_API_URL`` set, its own
    ``PREFECT_HOME``); the server's log is in its home folder. The README's commands, run the
    way a user runs them.
    """
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_UI_ENABLED="false",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    log = (home / "server.log").open("wb")
    prefect = Path(sys.executable).with_name("prefect")
    proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/health", 120, proc)
        client_home = tmp_path_factory.mktemp("prefect-client")
        yield dict(os.environ, PREFECT_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_HOME=str(client_home))
    finally:
        from processes import stop_group

        stop_group(proc)
        log.close()


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
