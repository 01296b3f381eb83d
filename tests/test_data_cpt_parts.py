"""The CPT builder's parts: cleaning, MinHash and the on-disk dedup index, rebuild rules, locking."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import numpy as np
import pytest

from coretech.data.clean import CleaningConfig, TextCleaner
from coretech.data.cpt import PatentRenderer, Unusable, build_cpt_corpus, render_general, truncate_text
from coretech.data.dedup import DedupConfig, DedupIndex, MinHasher, exact_hash, similarity
from coretech.errors import CoreTechError
from coretech.ipc import IpcScheme
from test_data_cpt import REPO, demo_config

# --- cleaning --------------------------------------------------------------------------------


def test_cleaning_normalises_and_removes_boilerplate() -> None:
    cleaner = TextCleaner(
        CleaningConfig(
            boilerplate_lines=["责任编辑[:：].*", r"\[\d{4}\]"],
            boilerplate_inline=[r"<br\s*/?>", "&nbsp;"],
        )
    )
    raw = (
        "\ufeff  Cafe\u0301 　ＧＰＵ  芯片，算力\u200b提升\r\n"
        "\n\n\n第二段<br/>继续&nbsp;说明\x07\t \n"
        "责任编辑：王明\n"
        "[0003]\n"
    )
    assert cleaner.clean(raw) == "Café GPU 芯片，算力提升\n\n第二段继续说明"


def test_cleaning_forms_are_configurable() -> None:
    text = "Ｇ０６Ｆ１６／００，ﬁber"
    assert TextCleaner(CleaningConfig(unicode_form="NFKC", fold_fullwidth=False)).clean(text) == "G06F16/00,fiber"
    assert TextCleaner(CleaningConfig(unicode_form="NFC", fold_fullwidth=True)).clean(text) == "G06F16／00，ﬁber"
    assert TextCleaner(CleaningConfig(unicode_form="none", fold_fullwidth=False)).clean(text) == text


def test_language_detection() -> None:
    cleaner = TextCleaner(CleaningConfig())
    assert cleaner.detect_language("本发明公开了一种基于深度学习的激光雷达点云目标检测方法。") == "zh"
    assert cleaner.detect_language("A lidar point cloud object detection method is disclosed.") == "en"
    assert cleaner.detect_language("Die Erfindung betrifft ein Verfahren zur Steuerung eines Schiffes.") == "de"
    assert cleaner.detect_language("本発明は、ニューラルネットワークを用いた画像認識装置に関する。") == "ja"


# --- sources ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scheme() -> IpcScheme:
    return IpcScheme.load([REPO / "data/samples/ipc_scheme_en.xml", REPO / "data/samples/ipc_titles_zh.csv"])


def test_patent_renderer_google_and_flat(scheme: IpcScheme) -> None:
    renderer = PatentRenderer(scheme, ["zh", "en"], 60, detect_language=lambda text: "en")
    google = renderer.render(
        {
            "publication_number": "US1A",
            "title": [{"text": "Drone", "language": "en"}, {"text": "无人机", "language": "zh"}],
            "abstract_localized": [{"text": "An unmanned aerial vehicle that lands on a marker.", "language": "en"}],
            "description_localized": [{"text": "First sentence is here. " * 5, "language": "en"}],
            "ipc": [],
            "cpc": [{"code": "B64U10/00"}, {"code": "Y02T50/50"}],
        }
    )
    assert google.language == "en" and google.text.startswith("Drone\nAbstract: An unmanned aerial vehicle")
    assert f"- B64U10/00: {scheme.title('B64U10/00', 'en')}" in google.text
    assert google.notes == ["CPC code outside the IPC skipped"]  # Y02T is CPC-only; cpc stood in for ipc
    description = google.text.split("Description:\n", 1)[1]
    assert description == "First sentence is here. First sentence is here." and len(description) <= 60
    flat = renderer.render(
        {"id": "X1", "title": "T", "abstract": "Plain text abstract.", "classifications": "G06N 3/08; bad code"}
    )
    assert flat.language == "en"  # from detect_language: untagged strings
    assert "- G06N3/08: Learning methods" in flat.text
    assert flat.repairs == [("invalid IPC code removed", "' bad code'")]
    with pytest.raises(Unusable, match="missing publication_number or id"):
        renderer.render({"title": "no id", "abstract": "text"})
    with pytest.raises(Unusable, match="language not kept: de") as info:
        renderer.render({"id": "D", "abstract": [{"text": "Ein Schiff.", "language": "de"}]})
    assert info.value.kind == "filtered"


def test_truncate_prefers_a_sentence_end() -> None:
    assert truncate_text("短句。" * 10, 10) == "短句。短句。短句。"
    assert truncate_text("x" * 30, 10) == "x" * 10
    assert truncate_text("fits", 10) == "fits"


def test_general_filter_order_and_errors() -> None:
    keep, drop = ["百科"], ["娱乐"]
    assert render_general({"id": 1, "dataType": "百科", "title": "T", "content": "C"}, keep, drop).text == "T\nC"
    assert render_general({"id": 2, "dataType": "百科", "title": "T", "content": "T and more"}, keep, drop).text == (
        "T and more"
    )
    with pytest.raises(Unusable, match="dataType dropped: 娱乐"):
        render_general({"dataType": "娱乐", "content": "x"}, keep, drop)
    with pytest.raises(Unusable, match=r"dataType not kept: \(none\)"):
        render_general({"content": "x", "dataType": None}, keep, drop)
    # the reference release's WuDao JSON Lines have no dataType: kept, and the report counts it
    assert render_general({"id": 3, "content": "x"}, keep, drop).notes == ["no dataType: type filter not applied"]
    with pytest.raises(Unusable, match="missing content") as info:
        render_general({"dataType": "百科"}, keep, drop)
    assert info.value.kind == "malformed"


# --- dedup -----------------------------------------------------------------------------------


def test_minhash_finds_near_duplicates_only(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(REPO / "models" / "smollm2-135m-instruct" / "tokenizer.json"))
    base = (REPO / "data" / "samples" / "README.md").read_text(encoding="utf-8")[:6000]
    edited = base.replace("the", "a", 3).replace("real", "actual", 2)
    other = (REPO / "configs" / "qwen2.5-7b" / "prepare_cpt.yaml").read_text(encoding="utf-8")
    hasher = MinHasher(DedupConfig(threshold=0.8))
    sigs = {
        name: hasher.signature(tokenizer.encode(text).ids) for name, text in [("a", base), ("b", edited), ("c", other)]
    }
    assert similarity(sigs["a"].tobytes(), sigs["b"].tobytes()) > 0.85
    assert similarity(sigs["a"].tobytes(), sigs["c"].tobytes()) < 0.2

    index = DedupIndex(tmp_path / "dedup.sqlite", threshold=0.8)
    keys = {name: hasher.band_keys(sig) for name, sig in sigs.items()}
    assert index.near_duplicate_of(keys["a"], sigs["a"].tobytes()) is None
    index.add_near(1, keys["a"])
    index.add_name(1, "doc-a", sigs["a"].tobytes())
    assert index.near_duplicate_of(keys["b"], sigs["b"].tobytes()) == "doc-a"
    assert index.near_duplicate_of(keys["c"], sigs["c"].tobytes()) is None
    assert index.exact_duplicate_of(exact_hash(base), 1) is None
    assert index.exact_duplicate_of(exact_hash(base), 2) == "doc-a"
    assert index.exact_duplicate_of(exact_hash(edited), 3) is None
    index.commit()
    index.rollback(1)  # an interrupted build forgets everything from document 1 on
    assert index.near_duplicate_of(keys["b"], sigs["b"].tobytes()) is None
    assert index.exact_duplicate_of(exact_hash(base), 4) is None
    index.close()


@pytest.mark.parametrize("length", [1, 3, 700, 40_000])
def test_signature_is_datasketchs_minhash(length: int) -> None:
    """The vectorised signature equals datasketch's affine32 MinHash of the same shingles, value for value."""
    from datasketch import MinHash

    config = DedupConfig(num_perm=64)
    hasher = MinHasher(config)
    ids = np.random.default_rng(length).integers(0, 49_152, size=length).tolist()
    reference = MinHash(num_perm=64, seed=1, hashfunc=lambda value: value, scheme="affine32")
    reference.update_batch(hasher.shingles(ids).tolist())
    assert hasher.signature(ids).tolist() == reference.hashvalues.tolist()


def test_sampling_keeps_the_same_shingles_in_every_document() -> None:
    hasher = MinHasher(DedupConfig(sample=8, min_sampled_shingles=4))
    ids = list(range(1000, 3000))
    full = set(MinHasher(DedupConfig(sample=1)).shingles(ids).tolist())
    sampled = set(hasher.shingles(ids).tolist())
    tail = set(hasher.shingles(ids[500:]).tolist())
    assert sampled < full and 0.08 < len(sampled) / len(full) < 0.17
    assert tail <= sampled  # a shingle kept in one document is kept in every document that has it


# --- rebuild rules and locking ---------------------------------------------------------------


def test_changing_one_source_rebuilds_it_and_the_sources_after_it(tmp_path: Path) -> None:
    build_cpt_corpus(demo_config(), tmp_path, workers=1)
    state = tmp_path / "cpt" / "state"
    before = {p: p.stat().st_mtime_ns for p in state.rglob("shard-*.json")}
    build_cpt_corpus(demo_config(patents__description_max_chars=600), tmp_path, workers=1)
    after = {p: p.stat().st_mtime_ns for p in state.rglob("shard-*.json")}
    changed = {p.parent.name for p in before if before[p] != after.get(p)}
    assert changed == {"patents", "general"}  # general dedups against patents, so it follows
    docs = [json.loads(x) for p in (tmp_path / "cpt" / "patents").glob("*.jsonl") for x in p.open()]
    assert max(len(d["text"].split("说明书：\n")[-1]) for d in docs if d["lang"] == "zh") <= 600


def test_a_second_build_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    lock_path = tmp_path / "cpt" / "state" / "lock"
    lock_path.parent.mkdir(parents=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(CoreTechError, match="another `coretech prepare cpt` is writing here"):
            build_cpt_corpus(demo_config(), tmp_path, workers=1)
