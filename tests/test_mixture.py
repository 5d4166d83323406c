"""Source mixtures: weights are shares, the rest is split by size, small sources repeat."""

from __future__ import annotations

import numpy as np
import pytest

from instructgpt.errors import ConfigError, DataError
from instructgpt.mixture import mix, take_to_target

SOURCES = np.array(["books"] * 6 + ["wiki"] * 2 + ["news"] * 2, dtype=object)
SIZES = np.array([100] * 6 + [50] * 2 + [100] * 2)  # books 600, wiki 100, news 200 (natural total 900)


def _taken(picked: np.ndarray) -> dict[str, int]:
    return {s: int(SIZES[picked][SOURCES[picked] == s].sum()) for s in ("books", "wiki", "news")}


def test_no_weights_takes_every_document_once() -> None:
    picked, epochs, record = mix(SOURCES, SIZES, {}, None, seed=0)
    assert sorted(picked.tolist()) == list(range(10))
    assert set(epochs.tolist()) == {0}
    assert record["shares"] == pytest.approx({"books": 2 / 3, "wiki": 1 / 9, "news": 2 / 9}, abs=1e-6)


def test_a_weight_is_a_share_and_the_rest_is_split_by_size() -> None:
    picked, epochs, record = mix(SOURCES, SIZES, {"wiki": 0.4}, 1000, seed=0)
    assert record["shares"] == pytest.approx({"wiki": 0.4, "books": 0.6 * 600 / 800, "news": 0.6 * 200 / 800}, abs=1e-6)
    taken = _taken(picked)
    assert taken["wiki"] == 400  # 4 passes over its 100 units
    assert record["epochs"]["wiki"] == 4.0
    assert sorted(epochs[SOURCES[picked] == "wiki"].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert 450 <= taken["books"] < 550 and 150 <= taken["news"] < 250


def test_all_weighted_are_normalised_and_zero_leaves_a_source_out() -> None:
    picked, _, record = mix(SOURCES, SIZES, {"books": 2, "wiki": 2, "news": 0}, 400, seed=0)
    assert record["shares"] == {"books": 0.5, "wiki": 0.5, "news": 0.0}
    assert _taken(picked)["news"] == 0


def test_the_order_is_seeded() -> None:
    first = mix(SOURCES, SIZES, {}, None, seed=1)[0]
    assert np.array_equal(first, mix(SOURCES, SIZES, {}, None, seed=1)[0])
    assert not np.array_equal(first, mix(SOURCES, SIZES, {}, None, seed=2)[0])


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"wiki": 0.7, "news": 0.5}, r"sum to 1\.2, leaving nothing for the unweighted source\(s\) \['books'\]"),
        ({"blogs": 0.1}, r"names source\(s\) \['blogs'\]"),
        ({"books": 0, "wiki": 0, "news": 0}, "every source has weight 0"),
    ],
)
def test_impossible_weights_are_config_errors(weights: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        mix(SOURCES, SIZES, weights, None, seed=0)


def test_empty_input_is_a_data_error() -> None:
    with pytest.raises(DataError, match="train split is empty"):
        mix(np.array([], dtype=object), np.array([], dtype=np.int64), {}, None, seed=0)


def test_take_to_target_is_whole_passes_then_the_shortest_prefix() -> None:
    order = np.array([3, 1, 2])
    docs, epochs = take_to_target(order, np.array([10, 10, 10]), 75)
    assert docs.tolist() == [3, 1, 2, 3, 1, 2, 3, 1]  # two passes make 60; 15 more needs two documents
    assert epochs.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    docs, _ = take_to_target(order, np.array([10, 10, 10]), 15)
    assert docs.tolist() == [3, 1]
