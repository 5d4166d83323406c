"""The pipeline's stage graph, read from the DVC repo: the one list of stages the flows run.

`dvc.yaml` declares the stages; DVC links them (a stage depends on the stage whose outs it reads).
`stage_graph` turns DVC's graph into plain `StageNode`s in a dependency order, so a Prefect flow
can make one task per stage without a second copy of the pipeline. Stage names are DVC's own
addresses (`train`, `finetune_tasks@sst2`, `sub/dvc.yaml:stage`), which `dvc repro -s` accepts.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from instructgpt.errors import ConfigError
from stages.provenance import find_dvc_root


@dataclass(frozen=True)
class StageNode:
    """A dvc.yaml stage: its DVC name, the stages it reads from, the metrics files it declares."""

    name: str
    upstream: tuple[str, ...]
    metrics: tuple[str, ...] = ()  # paths relative to the repo root, as declared under `metrics:`


def find_repo_root(start: str | Path | None = None) -> Path:
    """The nearest directory at or above `start` (default: the cwd) holding a `.dvc` directory."""
    here = Path(start or Path.cwd()).resolve()
    root = find_dvc_root(here)
    if root is not None:
        return root
    raise ConfigError("no DVC repo here or above: run from the project, or pass root", file=here)


def stage_graph(root: str | Path, targets: Iterable[str] | None = None) -> list[StageNode]:
    """The dvc.yaml stages of the repo at `root`, dependencies first.

    With `targets` (stage names, or a `foreach` group name for all its items), only those stages
    and the stages they depend on, directly or not. Stages DVC tracks with `.dvc` files (data added
    with `dvc add`) are inputs, not steps, and are left out. Ties in the order follow dvc.yaml.
    """
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    root = Path(root).resolve()
    # DVC names stages and resolves targets relative to the cwd; `dvc repro` runs at the root.
    with contextlib.chdir(root), Repo(str(root)) as repo:
        graph = repo.index.graph  # edges go from a stage to each stage it depends on
        declared = {stage: position for position, stage in enumerate(repo.index.stages)}
        wanted = set(graph.nodes)
        if targets is not None:
            chosen = []
            for target in targets:
                try:
                    chosen.extend(repo.stage.collect(target))
                except DvcException as err:
                    where = root / "dvc.yaml"
                    raise ConfigError(f"unknown stage {target!r}: {err}", file=where) from err
            wanted = set(chosen).union(*(nx.descendants(graph, stage) for stage in chosen))

        dependencies_first = graph.reverse(copy=False)
        order = nx.lexicographical_topological_sort(
            dependencies_first, key=lambda stage: f"{declared[stage]:08d}"
        )
        return [
            StageNode(
                name=stage.addressing,
                upstream=tuple(sorted(up.addressing for up in _upstream_stages(graph, stage))),
                metrics=tuple(out.def_path for out in stage.outs if out.metric),
            )
            for stage in order
            if stage in wanted and isinstance(stage, PipelineStage)
        ]


def _upstream_stages(graph, stage) -> set:
    """The dvc.yaml stages `stage` reads from, looking through `.dvc`-file stages in between."""
    from dvc.stage import PipelineStage

    found, seen, frontier = set(), set(), list(graph.successors(stage))
    while frontier:
        node = frontier.pop()
        if node in seen:
            continue
        seen.add(node)
        if isinstance(node, PipelineStage):
            found.add(node)
        else:
            frontier.extend(graph.successors(node))
    return found
