"""Token shards: the layout a reader relies on, the train mixture, and engines that agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tokenizers import Tokenizer, normalizers

from instructgpt import shards
from instructgpt.config import from_params
from instructgpt.errors import ConfigError, DataError
from instructgpt.shards import (
    EncodeConfig,
    encode_documents,
    read_index,
    read_meta,
    read_shard,
    shard_dtype,
)
from instructgpt.tokenizer import (
    SPECIAL,
    SPECIAL_TOKENS,
    TokenizerConfig,
    decode,
    encode_ordinary_batch,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def documents(data_pack: Path) -> pd.DataFrame:
    """~175 KB in three sources of different sizes; every tenth document is validation."""
    rows = []

    def add(source: str, kind: str, texts: list[str]) -> None:
        for i, text in enumerate(texts):
            split = "val" if i % 10 == 0 else "train"
            row = dict(doc_id=f"{source}-{i}", source=source, kind=kind, text=text, license="pd", split=split)
            rows.append(row)

    emma = (data_pack / "books/austen/emma.txt").read_text(encoding="utf-8")[:90_000]
    persuasion = (data_pack / "books/austen/persuasion.txt").read_text(encoding="utf-8")[:50_000]
    c4 = (data_pack / "web/c4_demo.jsonl").read_text(encoding="utf-8").splitlines()
    add("emma", "book", [p for p in emma.split("\n\n") if p.strip()])
    add("persuasion", "book", [p for p in persuasion.split("\n\n") if p.strip()])
    quoting = f"a page that quotes {SPECIAL.end_of_text} in its text"
    add("web", "web", [*(json.loads(line)["text"] for line in c4[:12]), quoting, ""])
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tokenizer(documents: pd.DataFrame) -> Tokenizer:
    return train_tokenizer(documents["text"], TokenizerConfig(vocab_size=512))


@pytest.fixture(scope="module")
def natural(documents: pd.DataFrame, tokenizer: Tokenizer, tmp_path_factory) -> Path:
    """Shards with no mixture: every document once."""
    out = tmp_path_factory.mktemp("natural") / "shards"
    encode_documents(documents, tokenizer, out, EncodeConfig(seed=1))
    return out


def encode(documents: pd.DataFrame, tokenizer: Tokenizer, out: Path, **config) -> dict:
    return encode_documents(documents, tokenizer, out, EncodeConfig(**config))


def token_ids(tokenizer: Tokenizer, documents: pd.DataFrame) -> dict[tuple[str, str], list[int]]:
    ids = encode_ordinary_batch(tokenizer, documents["text"].tolist())
    return dict(zip(zip(documents["source"], documents["doc_id"]), ids))


# --- layout -------------------------------------------------------------------------------------


def test_layout_every_document_is_followed_by_end_of_text(natural: Path) -> None:
    meta, index = read_meta(natural), read_index(natural)
    assert meta["dtype"] == "uint16" and meta["eot_id"] == 0 and meta["vocab_size"] == 512
    for split in ("train", "val"):
        shard, rows = read_shard(natural, split), index[index["split"] == split].sort_values("offset")
        assert shard.dtype == np.uint16 and len(shard) == meta["tokens"][split]["total"]
        ends = rows["offset"].to_numpy() + rows["n_tokens"].to_numpy()
        assert (shard[ends] == meta["eot_id"]).all()
        assert np.array_equal(np.flatnonzero(shard == meta["eot_id"]), ends)  # no other end-of-text
        assert np.array_equal(rows["offset"].to_numpy()[1:], ends[:-1] + 1)  # back to back, no gaps


def test_index_offsets_give_back_each_documents_tokens(natural, documents, tokenizer) -> None:
    expected = token_ids(tokenizer, documents)
    shards = {split: read_shard(natural, split) for split in ("train", "val")}
    for row in read_index(natural).itertuples():
        tokens = shards[row.split][row.offset : row.offset + row.n_tokens]
        assert tokens.tolist() == expected[(row.source, row.doc_id)]


def test_special_token_text_inside_a_document_stays_text(natural, documents, tokenizer) -> None:
    quoting = documents.loc[documents["text"].str.contains(SPECIAL.end_of_text, regex=False)].iloc[0]
    index = read_index(natural)
    row = index[index["doc_id"] == quoting["doc_id"]].iloc[0]
    tokens = read_shard(natural, row["split"])[row["offset"] : row["offset"] + row["n_tokens"]]
    assert decode(tokenizer, tokens) == quoting["text"]
    assert SPECIAL_TOKENS.index(SPECIAL.end_of_text) not in tokens


def test_val_is_every_val_document_once_in_input_order(natural: Path, documents) -> None:
    val = read_index(natural).query("split == 'val'")
    assert val["doc_id"].tolist() == documents.loc[documents["split"] == "val", "doc_id"].tolist()
    assert (val["epoch"] == 0).all()


def test_without_a_mixture_train_is_every_train_document_once(natural: Path, documents) -> None:
    train = read_index(natural).query("split == 'train'")
    assert sorted(train["doc_id"]) == sorted(documents.loc[documents["split"] == "train", "doc_id"])
    assert set(read_meta(natural)["mixture"]["epochs"].values()) == {1.0}
    assert train["source"].iloc[:30].nunique() > 1  # sources are interleaved, not one after another


def test_writing_in_small_gathers_gives_the_same_bytes(documents, tokenizer, natural, tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "_GATHER_TOKENS", 1000)
    encode(documents, tokenizer, tmp_path / "small", seed=1)
    for name in ("train.bin", "val.bin", "index.parquet"):
        assert (tmp_path / "small" / name).read_bytes() == (natural / name).read_bytes()


def test_a_corpus_without_val_documents_has_an_empty_val_shard(documents, tokenizer, tmp_path: Path) -> None:
    metrics = encode(documents[documents["split"] == "train"], tokenizer, tmp_path / "no-val")
    assert len(read_shard(tmp_path / "no-val", "val")) == 0
    assert metrics["tokens_total"]["val"] == 0 and metrics["tokens"]["val"] == {}


def test_shard_dtype_widens_past_65536_tokens() -> None:
    assert shard_dtype(65_536) == np.uint16
    assert shard_dtype(65_537) == np.uint32


# --- mixture ------------------------------------------------------------------------------------


def test_mixture_weights_are_honoured_and_a_small_source_repeats(documents, tokenizer, tmp_path) -> None:
    weights = {"emma": 0.3, "persuasion": 0.2, "web": 0.5}  # web is ~14% of the text: >3 epochs
    metrics = encode(documents, tokenizer, tmp_path / "mix", mixture=weights, train_tokens=60_000, seed=3)
    index = read_index(tmp_path / "mix").query("split == 'train'")
    lengths = index.groupby("doc_id")["n_tokens"].first() + 1
    for source, weight in weights.items():
        rows = index[index["source"] == source]
        taken, target = int((rows["n_tokens"] + 1).sum()), round(weight * 60_000)
        assert target <= taken < target + lengths[rows["doc_id"]].max()  # the last document is whole
        assert metrics["tokens"]["train"][source] == taken
    web = index[index["source"] == "web"]
    assert metrics["epochs"]["web"] > 3
    full_passes = int(metrics["epochs"]["web"])
    per_epoch = web.groupby("epoch")["doc_id"]
    n_docs = int((documents.source.eq("web") & documents.split.eq("train")).sum())
    assert all(per_epoch.nunique()[e] == per_epoch.size()[e] == n_docs for e in range(full_passes))
    assert 0 < per_epoch.size()[full_passes] < n_docs  # then a prefix of the same order


def test_unweighted_sources_share_what_the_weights_leave(documents, tokenizer, tmp_path):
    encode(documents, tokenizer, tmp_path / "mix", mixture={"web": 0.5}, seed=3)
    mix = read_meta(tmp_path / "mix")["mixture"]
    natural = mix["natural_shares"]
    books = natural["emma"] + natural["persuasion"]
    expected = {"web": 0.5, "emma": 0.5 * natural["emma"] / books, "persuasion": 0.5 * natural["persuasion"] / books}
    assert mix["shares"] == pytest.approx(expected, abs=1e-5)


def test_a_weight_of_zero_leaves_a_source_out(documents, tokenizer, tmp_path: Path) -> None:
    metrics = encode(documents, tokenizer, tmp_path / "mix", mixture={"web": 0.0})
    assert "web" not in set(read_index(tmp_path / "mix").query("split == 'train'")["source"])
    assert metrics["epochs"]["web"] == 0.0 and metrics["tokens"]["val"]["web"] > 0


def test_same_seed_same_bytes_other_seed_other_order(documents, tokenizer, natural, tmp_path) -> None:
    encode(documents, tokenizer, tmp_path / "again", seed=1)
    encode(documents, tokenizer, tmp_path / "other", seed=2)
    for name in ("train.bin", "val.bin", "index.parquet", "meta.json"):  # meta.json holds nothing timed
        assert (tmp_path / "again" / name).read_bytes() == (natural / name).read_bytes()
    assert (tmp_path / "other" / "train.bin").read_bytes() != (natural / "train.bin").read_bytes()
    assert sorted(read_shard(tmp_path / "other", "train")) == sorted(read_shard(natural, "train"))


# --- engines ------------------------------------------------------------------------------------


def test_engines_write_identical_shards(documents, tokenizer, tmp_path: Path) -> None:
    for engine in ("tiktoken", "tokenizers", "auto"):
        metrics = encode(documents, tokenizer, tmp_path / engine, engine=engine, mixture={"web": 0.4}, seed=5)
        assert metrics["encode_mb_per_s"] > 0 and metrics["encode_tokens_per_s"] > 0
        assert metrics["engine"]["requested"] == engine and metrics["engine"]["used"] in {"tiktoken", "tokenizers"}
        assert engine == "auto" or metrics["engine"]["used"] == engine
        assert "engine" not in read_meta(tmp_path / engine)  # host timings decide it; the shards are the same
    for name in ("train.bin", "val.bin", "index.parquet"):
        assert (tmp_path / "tiktoken" / name).read_bytes() == (tmp_path / "tokenizers" / name).read_bytes()
        assert (tmp_path / "auto" / name).read_bytes() == (tmp_path / "tokenizers" / name).read_bytes()


def test_auto_falls_back_to_tokenizers_when_tiktoken_cannot_mirror_it(documents, tokenizer, tmp_path):
    odd = Tokenizer.from_str(tokenizer.to_str())
    odd.normalizer = normalizers.NFC()
    engine = encode(documents, odd, tmp_path / "auto", engine="auto")["engine"]
    assert engine["used"] == "tokenizers" and "normalizer" in engine["reason"]
    with pytest.raises(ConfigError, match="engine"):
        encode(documents, odd, tmp_path / "forced", engine="tiktoken")


# --- outputs and errors -------------------------------------------------------------------------


def test_output_directory_is_replaced_as_a_whole(documents, tokenizer, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old")
    encode(documents, tokenizer, out)
    assert sorted(p.name for p in out.iterdir()) == ["index.parquet", "meta.json", "train.bin", "val.bin"]


def test_bad_documents_are_named(documents, tokenizer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="split"):
        encode(documents.assign(split="test"), tokenizer, tmp_path / "x")
    with pytest.raises(DataError, match="license"):
        encode(documents.drop(columns="license"), tokenizer, tmp_path / "x")
    with pytest.raises(DataError, match="doc_id"):
        encode(pd.concat([documents, documents.iloc[:1]]), tokenizer, tmp_path / "x")
    with pytest.raises(ConfigError, match="mixture.typo"):
        encode(documents, tokenizer, tmp_path / "x", mixture={"typo": 0.5})
    assert not (tmp_path / "x").exists()


def test_config_from_params() -> None:
    config = from_params(EncodeConfig, {"engine": "tiktoken", "mixture": {"web": 1}}, "params.yaml:encode")
    assert config.mixture == {"web": 1.0}
    with pytest.raises(ConfigError, match="engine"):
        from_params(EncodeConfig, {"engine": "fast"}, "params.yaml:encode")
    with pytest.raises(ConfigError, match="mixture.web"):
        from_params(EncodeConfig, {"mixture": {"web": -1}}, "params.yaml:encode")


def test_the_encode_section_of_params_yaml_builds_a_config(repo_root: Path) -> None:
    import yaml

    params = yaml.safe_load((repo_root / "params.yaml").read_text(encoding="utf-8"))
    config = from_params(EncodeConfig, params["encode"], "params.yaml:encode")
    assert config.threads >= 1
