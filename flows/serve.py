"""Serve the pipeline flow as a scheduled Prefect deployment: `orchestration.cron` from params.yaml.

The deployment is `pipeline/<orchestration.deployment_name>` ('pipeline/nightly' by default). This
process is its runner: it polls the server and runs each scheduled or requested flow run in a
subprocess, one at a time, until stopped (Ctrl-C pauses the schedule).

    prefect server start --host 127.0.0.1 --port 4200        # or `make ui`; UI on :4200
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve [--root DIR]                        # or `make serve`
    prefect deployment run 'pipeline/nightly'                 # a run now, from another shell
    prefect deployment run 'pipeline/nightly' -p force=true -p 'targets=["sft"]'

Cron times are UTC. The deployment's `root` parameter pins the DVC repo the runs reproduce.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from prefect.settings import get_current_settings
from prefect.types.entrypoint import EntrypointType

from flows.dag import find_repo_root
from flows.pipeline import load_orchestration, pipeline


def serve(root: Path) -> None:
    """Register the deployment for the repo at `root` and run its flow runs until stopped."""
    if not get_current_settings().api.url:
        raise SystemExit(
            "flows.serve needs a Prefect server that outlives it: start one with "
            "`prefect server start --host 127.0.0.1 --port 4200` and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    settings = load_orchestration(root)
    pipeline.serve(
        name=settings.deployment_name,
        cron=settings.cron,
        parameters={"root": str(root)},
        description=f"The DVC pipeline of {root}, one task per stage.",
        limit=1,  # one pipeline run at a time per workspace
        entrypoint_type=EntrypointType.MODULE_PATH,  # flows.pipeline.pipeline, as installed
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--root", help="the DVC repo (default: the one around the current directory)")
    args = parser.parse_args(argv)
    serve(Path(args.root).resolve() if args.root else find_repo_root())


if __name__ == "__main__":
    main()
