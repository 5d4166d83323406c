"""The project's own params.yaml builds every training stage's typed params, and the checks on
them refuse what the papers rule out (K outside 4..9, an unknown labeler, a phase that is not one)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from instructgpt.config import from_params
from instructgpt.errors import ConfigError
from stages.comparisons import ComparisonsParams
from stages.reward import RewardParams
from stages.sft import SftParams

STAGES = {"sft": SftParams, "comparisons": ComparisonsParams, "reward": RewardParams}


@pytest.fixture(scope="module")
def params(repo_root: Path) -> dict:
    return yaml.safe_load((repo_root / "params.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_the_default_params_build_the_stage_config(params: dict, stage: str) -> None:
    built = from_params(STAGES[stage], params[stage], f"params.yaml:{stage}")
    assert isinstance(built, STAGES[stage])


def test_the_defaults_are_instructgpts(params: dict) -> None:
    comparisons = from_params(ComparisonsParams, params["comparisons"], "params.yaml:comparisons")
    reward = from_params(RewardParams, params["reward"], "params.yaml:reward")
    assert 4 <= comparisons.sampled.responses <= 9
    assert comparisons.imported.enabled and comparisons.sampled.enabled  # both kinds of source on
    assert comparisons.labelers == ["file", "programmatic"]
    assert reward.epochs == 1 and reward.margin == 0.0 and reward.normalise_on == "reward"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"sampled": {"responses": 3}}, "4 to 9"),
        ({"sampled": {"responses": 10}}, "4 to 9"),
        ({"labelers": ["oracle"]}, "labelers must be some of"),
        ({"labelers": []}, "labelers must be some of"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"rubric": {"overlap": -1}}, "non-negative"),
        ({"sampled": {"samples": 4}}, "unknown key"),
    ],
)
def test_bad_comparisons_params_are_refused(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_params(ComparisonsParams, section, "params.yaml:comparisons")


@pytest.mark.parametrize(("section", "message"), [({"normalise_on": "test"}, "normalise_on"), ({"margin": -1}, "margin")])
def test_bad_reward_params_are_refused(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_params(RewardParams, section, "params.yaml:reward")
