"""Where a stage run comes from: the DVC repo it runs in, the git commit, and its deps' DVC hashes.

This is the DVC/git edge of the stages; the library never imports dvc. `stage_tags` is what
`run_stage` attaches to the stage's MLflow run, so a run can be traced back to the exact code
(`git_commit`, `git_dirty`) and data (`dvc.dep.<path>`, the md5 DVC records in dvc.lock).

Reading the repo from inside a stage that `dvc repro` is running is safe: DVC releases its repo
lock while the stage's command runs, and hashing a dependency only reads files (and DVC's
hash cache, which then saves DVC from hashing them again when it writes dvc.lock).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Iterable

UNKNOWN = "unknown"


def repo_root(start: str | Path | None = None) -> Path:
    """The DVC repo root containing `start` (default: the cwd): where params are read, outs written.

    Under `dvc exp run --temp` (and queued experiments) this is the temp workspace, a git clone at
    `<repo>/.dvc/tmp/exps/tmpXXXXXXXX/` holding the experiment's params and receiving its outs;
    `tracking.store_root` maps it back to the launching repo, where the MLflow store lives.
    """
    here = Path(start or os.getcwd()).resolve()
    root = find_dvc_root(here)
    if root is None:
        raise FileNotFoundError(
            f"{here} is not inside a DVC repository (no .dvc directory above it); "
            "run stages from the repo, or run 'dvc init' first"
        )
    return root


def find_dvc_root(path: Path) -> Path | None:
    """The nearest directory at or above `path` holding a `.dvc` directory, or None."""
    for candidate in (path, *path.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return None


def git_commit(root: Path) -> str:
    """HEAD's full sha, or 'unknown' when there is no git or no commit yet."""
    return _git(root, "rev-parse", "--verify", "--quiet", "HEAD") or UNKNOWN


def git_dirty(root: Path, outs: Iterable[str] = ()) -> str:
    """'true' when the code differs from HEAD (tracked changes or untracked files), else 'false'.

    DVC's own bookkeeping is not code: dvc.lock and .gitignore files, and the paths in `outs`
    (relative to `root`; `stage_tags` passes every DVC-declared out), are left out, so the stages
    of one `dvc repro` on a clean checkout all read 'false'.
    """
    if git_commit(root) == UNKNOWN:
        return UNKNOWN
    excluded = [":(top,exclude,glob)**/dvc.lock", ":(top,exclude,glob)**/.gitignore"]
    excluded += [f":(exclude,literal){out}" for out in outs]
    status = _git(root, "status", "--porcelain", "--untracked-files=normal", "--", ":/", *excluded)
    if status is None:
        return UNKNOWN
    return "true" if status else "false"


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def stage_tags(root: Path, stage: str) -> dict[str, str]:
    """Tags pinning a stage run to code and data: git commit, dirty flag, DVC dep hashes.

    Dep hashes are computed the way DVC computes them for dvc.lock (`dvc.dep.<path>` = md5, with
    '.dir' for directories, paths as dvc.lock writes them); a params dep is summarised as the md5
    of its values' canonical JSON (`dvc.params.<file>`). A stage that dvc.yaml does not define
    gets the git tags only. Under `dvc exp run` the experiment's name is `dvc.exp_name`.
    """
    deps, outs = _dvc_facts(root, stage)
    tags = {"git_commit": git_commit(root), "git_dirty": git_dirty(root, outs)}
    if exp_name := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = exp_name
    tags.update(deps)
    return tags


def _dvc_facts(root: Path, stage: str) -> tuple[dict[str, str], list[str]]:
    """(dep hash tags of `stage`, every out of the repo relative to `root`) from DVC itself."""
    if not (root / "dvc.yaml").is_file():
        return {}, []
    from dvc.dependency.param import ParamsDependency
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    tags: dict[str, str] = {}
    outs: list[str] = []
    try:
        with Repo(os.fspath(root)) as repo:
            outs = [os.path.relpath(out.fs_path, root) for out in repo.index.outs]
            outs = [out for out in outs if not out.startswith("..")]  # git cannot exclude those
            try:
                dvc_stage = repo.stage.load_one(os.path.join(repo.root_dir, "dvc.yaml"), stage)
            except (DvcException, KeyError):
                return {}, outs
            for dep in dvc_stage.deps:
                if isinstance(dep, ParamsDependency):
                    tags[_tag_key("dvc.params.", dep.def_path)] = _json_md5(dep.read_params())
                elif dep.exists and (hash_info := dep.get_hash()) and hash_info.value:
                    tags[_tag_key("dvc.dep.", dep.def_path)] = str(hash_info.value)
    except DvcException as err:
        tags["dvc.error"] = str(err)[:500]
    return tags, outs


def _tag_key(prefix: str, path: str) -> str:
    """An MLflow-valid tag key for a path (alphanumerics, _ - . space : /, no '..' tricks)."""
    clean = re.sub(r"[^\w./\- :]", "_", path.replace(os.sep, "/")).strip("/")
    clean = "/".join(part if part not in (".", "..") else "_" for part in clean.split("/") if part)
    return (prefix + clean)[:250]


def _json_md5(values: Any) -> str:
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.md5(text.encode("utf-8")).hexdigest()
