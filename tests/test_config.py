"""Typed configs from params: unknown keys and wrong types fail with the key named."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from instructgpt.config import from_params
from instructgpt.errors import ConfigError


@dataclass(frozen=True)
class Example:
    size: int = 8
    rate: float = 0.5
    mode: Literal["a", "b"] = "a"
    cap: int | None = None
    weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError("size must be positive")


def test_defaults_and_coercion() -> None:
    config = from_params(Example, {"rate": 1, "weights": {"x": 2}}, "params.yaml:example")
    assert config == Example(rate=1.0, weights={"x": 2.0})
    assert isinstance(config.rate, float)
    assert from_params(Example, None, "w") == Example()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"sise": 3}, "params.yaml:example: field 'sise': unknown key"),
        ({"size": "big"}, "field 'size': must be an integer"),
        ({"size": True}, "field 'size': must be an integer"),
        ({"mode": "c"}, "field 'mode': must be one of"),
        ({"cap": 1.5}, "field 'cap': must be an integer"),
        ({"weights": {"x": "heavy"}}, "field 'weights.x': must be a number"),
        ({"size": 0}, "size must be positive"),
    ],
)
def test_bad_values_name_the_key(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        from_params(Example, section, "params.yaml:example")
