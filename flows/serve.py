"""``crav serve``: the main job as a scheduled Prefect deployment, served from this process.

The deployment (``crav-run/<name>``) lives on the Prefect server named by ``PREFECT_API_URL``;
this process polls it and executes its flow runs, the scheduled ones and those started by
hand (``prefect deployment run 'crav-run/<name>' --param patient_id=ID``). Runs of the
deployment never overlap (``limit=1``); a ``crav run`` on the same output folder at the same
time is refused by the output lock.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flows.crav_flow import crav_run, make_task_runner
from pipeline.settings import load_settings

log = logging.getLogger(__name__)

SERVER_HELP = (
    "start one with:  prefect server start --host 127.0.0.1 --port 4200\n"
    "then, in the shell that runs crav serve:  export PREFECT_API_URL=http://127.0.0.1:4200/api\n"
    "(README, 'Scheduled runs')")


class ServeError(Exception):
    """The deployment cannot be served (no Prefect server configured or reachable)."""


def prefect_api_url() -> str | None:
    """The Prefect server this process talks to (``PREFECT_API_URL``, environment or profile)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def check_server(url: str | None) -> str:
    """Raise :class:`ServeError` unless a Prefect server answers at ``url``."""
    if not url:
        raise ServeError("no Prefect server configured: PREFECT_API_URL is not set, and a schedule needs a "
                         "server that outlives this process; " + SERVER_HELP)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise ServeError(f"the Prefect server at {url} does not answer ({type(error).__name__}: {error}); "
                         + SERVER_HELP)
    return url


def deployment_parameters(input_dir: Path, output_dir: Path, registry: Path | None, settings_path: Path | None,
                          quiet_period_s: float | None) -> dict[str, Any]:
    """The default parameters of every run of the deployment (a run can override them, e.g. ``patient_id``)."""
    return {
        "input_dir": str(input_dir), "output_dir": str(output_dir),
        "registry": str(registry) if registry else None,
        "settings_file": str(settings_path) if settings_path else None,
        "overrides": {"quiet_period_s": quiet_period_s} if quiet_period_s is not None else None,
        "patient_id": None, "force": False,
    }


def serve_export(input_dir: Path, output_dir: Path, registry: Path | None, interval_s: float | None,
                 cron: str | None, name: str, settings_path: Path | None = None,
                 quiet_period_s: float | None = None, dask_address: str | None = None) -> None:
    """Create or update the deployment ``crav-run/<name>`` and run its flow runs until interrupted."""
    url = check_server(prefect_api_url())
    settings = load_settings(settings_path, {"quiet_period_s": quiet_period_s} if quiet_period_s is not None else None)
    flow = crav_run.with_options(task_runner=make_task_runner(settings, dask_address))
    schedule: dict[str, Any] = {"interval": interval_s} if interval_s is not None else {"cron": cron}
    print(f"serving crav-run/{name} from the Prefect server at {url}; Ctrl-C stops it\n"
          f"re-run one patient: prefect deployment run 'crav-run/{name}' --param patient_id=ID", flush=True)
    flow.serve(name=name, parameters=deployment_parameters(input_dir, output_dir, registry, settings_path,
                                                           quiet_period_s),
               limit=1, print_starting_message=False, enforce_parameter_schema=False,
               description=f"crav run of {input_dir} into {output_dir}", **schedule)
