"""Stage `fetch`: bring every catalogued source into `data/raw/`, checksum-verified, under DVC.

Each source is taken from the mirror (default ../shared/data; $INSTRUCTGPT_DATA_MIRROR or params
`fetch.mirror` override it), else downloaded from its url; its sha256 must match the catalogue.
The copy is DVC's output, so a fresh clone reproduces the raw inputs with `dvc repro`, and every
later stage depends on content that the catalogue pins.

    python -m stages.fetch        (or: dvc repro fetch)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from instructgpt import atomic
from instructgpt.sources import list_files, load_catalogue, mirror_dir, resolve
from stages.common import StageContext, run_stage

RAW = Path("data/raw")
MANIFEST = "manifest.json"


def main(ctx: StageContext) -> dict[str, Any]:
    catalogue = load_catalogue(ctx.path("data/sources.yaml"))
    mirror = mirror_dir(ctx.root, ctx.section.get("mirror"))
    manifest: dict[str, Any] = {}
    with atomic.atomic_dir(ctx.path(RAW)) as out:
        downloads = out / ".downloads"
        for source in catalogue:
            found = resolve(source, mirror, downloads)
            target = out / source.name
            files = [Path(found.name)] if found.is_file() else list_files(found)
            for rel in files:
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                # copyfile, not copy2: the mirror is read-only and its modes must not follow.
                shutil.copyfile(found if found.is_file() else found / rel, target / rel)
            manifest[source.name] = {
                "layout": "file" if found.is_file() else "directory",
                "file": found.name if found.is_file() else None,
                "sha256": source.sha256,
                "bytes": sum((target / rel).stat().st_size for rel in files),
                "files": len(files),
                "from": "url" if downloads in found.parents else "mirror",
            }
            print(f"  {source.name:<20} {manifest[source.name]['bytes']:>10,} bytes  from {manifest[source.name]['from']}")
        shutil.rmtree(downloads, ignore_errors=True)
        atomic.write_json(out / MANIFEST, manifest)
    ctx.tracker.log_params({"resolved_mirror": str(mirror)})
    return {
        "sources": len(manifest),
        "bytes": sum(m["bytes"] for m in manifest.values()),
        "from_url": sum(m["from"] == "url" for m in manifest.values()),
        "per_source_bytes": {name: m["bytes"] for name, m in manifest.items()},
    }


if __name__ == "__main__":
    run_stage("fetch", main)
