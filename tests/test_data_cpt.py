"""The CPT corpus builder end to end on the samples and fixtures, with the real embedded tokenizer."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from coretech.cli import main as cli_main
from coretech.config import ConfigError, build_dataclass, load_yaml
from coretech.data.cpt import CptCorpusConfig, _Build, build_cpt_corpus, iter_corpus_records, load_cpt_config
from coretech.data.records import RecordError, SkipLog, iter_jsonl, iter_records

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "configs" / "smollm2-135m" / "prepare_cpt.yaml"
FIXTURES = REPO / "tests" / "fixtures" / "cpt"


def demo_config(**changes: object) -> CptCorpusConfig:
    """The demo recipe with absolute paths (tests do not depend on the working directory)."""
    data = load_yaml(DEMO_CONFIG)
    data["tokenizer"] = str(REPO / data["tokenizer"])
    data["ipc_scheme"] = [str(REPO / p) for p in data["ipc_scheme"]]
    for source in ("patents", "general"):
        data[source]["files"] = [str(REPO / p) for p in data[source]["files"]]
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            if value is None:
                data[section].pop(field, None)
            else:
                data[section][field] = value
        else:
            data[section] = value
    return build_dataclass(CptCorpusConfig, data, "test")


def read_docs(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.open(encoding="utf-8")]


def shard_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jsonl"))}


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory: pytest.TempPathFactory, embedded_model: Path):
    out = tmp_path_factory.mktemp("cpt_demo")
    report = build_cpt_corpus(demo_config(tokenizer=str(embedded_model)), out, workers=1)
    return out, report


# --- settings --------------------------------------------------------------------------------


def test_demo_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    config = load_cpt_config("configs/smollm2-135m/prepare_cpt.yaml")
    assert config.patents is not None and config.general is not None and config.ipc is not None
    assert "娱乐" in config.general.drop_data_types
    assert config.dedup.threshold == 0.8


def test_reference_config_loads_with_reference_budgets() -> None:
    config = load_cpt_config(REPO / "configs" / "qwen2.5-7b" / "prepare_cpt.yaml")
    assert (config.ipc.tokens, config.patents.tokens, config.general.tokens) == (
        160_000_000,
        5_760_000_000,
        2_580_000_000,
    )
    assert config.tokenizer == "Qwen/Qwen2.5-7B"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"shards": 3}, "unknown key 'shards'"),
        ({"dedup": {"threshold": 1.5}}, "threshold"),
        ({"patents__ratio": 0.5}, "give tokens or ratio"),
        ({"patents__tokens": None, "patents__ratio": 0.5}, "every source needs a ratio"),
        ({"total_tokens": 1000}, "only meaningful with ratios"),
        ({"cleaning": {"boilerplate_lines": ["(unclosed"]}}, "invalid regular expression"),
        ({"ipc__levels": ["section", "division"]}, "'division' is not one of"),
    ],
)
def test_config_errors_name_the_key(change: dict, message: str) -> None:
    if "patents__ratio" in change and "patents__tokens" not in change:
        change = {**change, "patents__tokens": 100}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        demo_config(**change)


# --- the demo build --------------------------------------------------------------------------


def test_demo_build_counts_every_drop_by_reason(demo_build) -> None:
    report = demo_build[1]
    patents, general = report.sources["patents"], report.sources["general"]
    assert patents.read == 42 and patents.kept + patents.dropped == patents.read
    assert dict(patents.filtered.counts) == {
        "near duplicate": 1,
        "exact duplicate": 1,
        "language not kept: de": 1,
        "no abstract or description": 1,
    }
    assert "patents_google.jsonl:9" in patents.filtered.examples["near duplicate"][0]
    assert "of CN115166705A" in patents.filtered.examples["near duplicate"][0]
    assert dict(general.filtered.counts) == {
        "dataType dropped: 娱乐": 4,
        "dataType not kept: 体育": 1,
        "near duplicate": 1,
        "exact duplicate": 1,
        "too short": 1,
        "language not kept: ja": 1,
    }
    assert general.read == 31 and general.kept == 31 - 9
    assert report.sources["ipc"].kept == 226  # 113 codes at four levels, English and Chinese


def test_demo_build_writes_corpus_stats_and_dataset_info(demo_build) -> None:
    out, report = demo_build
    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    for name, folder in [
        ("coretech_cpt", "cpt/mixed"),
        ("coretech_cpt_ipc", "cpt/ipc"),
        ("coretech_cpt_patents", "cpt/patents"),
        ("coretech_cpt_general", "cpt/general"),
    ]:
        assert info[name] == {"file_name": folder, "columns": {"prompt": "text"}}
        files = list((out / folder).iterdir())
        # LLaMA-Factory loads every file of the folder and needs one type: nothing but .jsonl shards
        assert files and all(f.suffix == ".jsonl" and not f.name.startswith(".") for f in files)
    mixed = read_docs(out / "cpt" / "mixed")
    assert len(mixed) == report.total()["entries"] == 226 + 38 + 22
    assert sum(d["tokens"] for d in mixed) == report.total()["tokens"]
    stats = json.loads((out / "cpt" / "stats.json").read_text(encoding="utf-8"))
    assert stats["sources"]["general"]["filtered"]["by_reason"]["dataType dropped: 娱乐"] == 4
    markdown = (out / "cpt" / "stats.md").read_text(encoding="utf-8")
    assert "| source | entries | tokens |" in markdown and "dataType dropped: 娱乐" in markdown
    assert markdown == report.markdown()


def test_token_counts_are_the_embedded_tokenizers(demo_build, embedded_model: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(embedded_model / "tokenizer.json"))
    docs = read_docs(demo_build[0] / "cpt" / "patents")[:5]
    for doc in docs:
        assert doc["tokens"] == len(tokenizer.encode(doc["text"], add_special_tokens=False).ids) > 50


def test_ipc_definition_documents(demo_build) -> None:
    docs = {d["id"]: d for d in read_docs(demo_build[0] / "cpt" / "ipc")}
    en, zh = docs["ipc:G06N3/00:en"], docs["ipc:G06N3/00:zh"]
    assert en["lang"] == "en" and zh["lang"] == "zh"
    assert en["text"].startswith("IPC G06N3/00: Computing arrangements based on biological models")
    assert "subclass G06N (COMPUTING ARRANGEMENTS BASED ON SPECIFIC COMPUTATIONAL MODELS)" in en["text"]
    assert "It contains 5 subgroups:" in en["text"] and "- G06N3/02: Neural networks" in en["text"]
    assert zh["text"].startswith("IPC分类号 G06N3/00：基于生物学模型的计算机系统")
    assert "下设5个小组" in zh["text"] and "- G06N3/063：使用电子手段的神经网络" in zh["text"]
    assert "- G06:" in docs["ipc:G:en"]["text"]  # a section lists its classes
    assert not any(key.count("/") and not key.split(":")[1].endswith("/00") for key in docs)  # no subgroups


def test_patent_documents_in_both_forms(demo_build) -> None:
    docs = {d["id"]: d for d in read_docs(demo_build[0] / "cpt" / "patents")}
    chip = docs["CN115456149A"]
    assert chip["lang"] == "zh"
    assert chip["text"].startswith("一种用于神经网络推理的存算一体芯片及其控制方法\n摘要：本发明公开了")
    assert "- G06N3/063：使用电子手段的神经网络" in chip["text"]
    assert "[0001]" not in chip["text"]  # paragraph numbers are boilerplate
    assert len(chip["text"].split("说明书：\n", 1)[1]) <= 1200  # description_max_chars
    assert "G06N3/0464（属于G06N3/04：体系结构" in docs["CN115881302A"]["text"]  # ancestor's title
    assert "Abstract: A neural processing unit" in docs["US2023196068A1"]["text"]
    assert docs["US2023012345A1"]["lang"] == "en"  # plain strings: language detected
    flat = docs["CN116541187A"]  # flat form without `language`: detected, Chinese labels
    assert flat["lang"] == "zh" and "摘要：" in flat["text"] and "- G06N5/00：" in flat["text"]
    assert "- A61H1/00：被动锻炼用的装置" in docs["CN116777421A"]["text"]


def test_general_documents_are_cleaned(demo_build) -> None:
    docs = {d["id"]: d for d in read_docs(demo_build[0] / "cpt" / "general")}
    assert docs["3"]["text"].startswith("5G专网走进工厂车间\n2023年以来")  # full-width digits folded
    assert "点击查看更多" not in docs["3"]["text"] and "责任编辑" not in docs["2"]["text"]
    assert "<br" not in docs["11"]["text"] and "&nbsp;" not in docs["11"]["text"]
    assert "欢迎在评论区交流看法" in docs["11"]["text"]


# --- budgets, resume, parallel ---------------------------------------------------------------


def test_absolute_token_budget(tmp_path: Path, demo_build) -> None:
    budget = 10_000
    report = build_cpt_corpus(demo_config(ipc__tokens=budget), tmp_path, workers=1)
    mixed = [d for d in read_docs(tmp_path / "cpt" / "mixed") if d["source"] == "ipc"]
    assert report.mix["ipc"].tokens == sum(d["tokens"] for d in mixed) <= budget
    assert report.mix["ipc"].tokens > budget * 0.5
    assert report.mix["ipc"].left_out == 226 - len(mixed) > 0
    assert report.mix["patents"].entries == 38  # no budget: everything
    assert "over the token budget" in report.markdown()


def test_ratio_budget_and_mix_only_rebuild(tmp_path: Path) -> None:
    config = demo_config(ipc__ratio=0.2, patents__ratio=0.6, general__ratio=0.2)
    report = build_cpt_corpus(config, tmp_path, workers=1)
    tokens = {name: mix.tokens for name, mix in report.mix.items()}
    total = sum(tokens.values())
    # the largest mix the ratios allow: the source with the least tokens per share is taken whole
    shares = {"ipc": 0.2, "patents": 0.6, "general": 0.2}
    limiting = min(shares, key=lambda name: report.sources[name].tokens / shares[name])
    assert report.mix[limiting].entries == report.sources[limiting].kept
    assert abs(tokens["patents"] / total - 0.6) < 0.1 and abs(tokens["ipc"] / total - 0.2) < 0.1
    markers = {p: p.stat().st_mtime_ns for p in (tmp_path / "cpt" / "state" / "patents").glob("*.json")}
    smaller = demo_config(ipc__ratio=0.2, patents__ratio=0.6, general__ratio=0.2, total_tokens=20_000)
    report = build_cpt_corpus(smaller, tmp_path, workers=1)
    # documents are drawn at random up to each budget: a few hundred tokens each, so not exact
    assert 14_000 < report.total()["tokens"] <= 20_000
    assert all(mix.tokens <= mix.budget for mix in report.mix.values())
    assert {p: p.stat().st_mtime_ns for p in markers} == markers  # only the mix was redone


def test_resume_after_lost_last_shard_gives_the_same_corpus(tmp_path: Path, demo_build) -> None:
    reference = shard_bytes(demo_build[0] / "cpt")
    out = tmp_path / "out"
    build_cpt_corpus(demo_config(), out, workers=1)
    state = out / "cpt" / "state" / "general"
    last = sorted(state.glob("shard-*.json"))[-1]
    last.unlink()  # the build died before this shard's marker was written
    (state / "done.json").unlink()
    (out / "cpt" / "general" / f"part-{last.stem.split('-')[1]}.jsonl").unlink(missing_ok=True)
    report = build_cpt_corpus(demo_config(), out, workers=1)
    assert shard_bytes(out / "cpt") == reference
    assert report.as_dict()["sources"] == demo_build[1].as_dict()["sources"]


def test_resume_after_interruption_mid_build(tmp_path: Path, demo_build, monkeypatch: pytest.MonkeyPatch) -> None:
    finish = _Build._finish
    calls = {"n": 0}

    def finish_then_stop(self, name, shard):  # the real method, then Ctrl-C after 5 shards
        finish(self, name, shard)
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(_Build, "_finish", finish_then_stop)
    with pytest.raises(KeyboardInterrupt):
        build_cpt_corpus(demo_config(), tmp_path, workers=1)
    monkeypatch.setattr(_Build, "_finish", finish)
    assert len(list((tmp_path / "cpt" / "state" / "ipc").glob("shard-*.json"))) == 5
    assert not (tmp_path / "dataset_info.json").exists()
    report = build_cpt_corpus(demo_config(), tmp_path, workers=1)
    assert shard_bytes(tmp_path / "cpt") == shard_bytes(demo_build[0] / "cpt")
    assert report.as_dict()["sources"] == demo_build[1].as_dict()["sources"]


def test_two_workers_write_the_same_corpus_as_one(tmp_path: Path, demo_build) -> None:
    build_cpt_corpus(demo_config(), tmp_path, workers=2)
    assert shard_bytes(tmp_path / "cpt") == shard_bytes(demo_build[0] / "cpt")


def test_gzip_inputs_give_the_same_documents(tmp_path: Path, demo_build) -> None:
    """BigQuery's compressed exports (``.json.gz`` JSON Lines) and gzipped WuDao arrays read as they are."""
    config = demo_config()
    files = {}
    for source in ("patents", "general"):
        files[source] = []
        for original in map(Path, getattr(config, source).files):
            packed = tmp_path / "raw" / (original.name + ".gz")
            packed.parent.mkdir(exist_ok=True)
            packed.write_bytes(gzip.compress(original.read_bytes()))
            files[source].append(str(packed))
    build_cpt_corpus(demo_config(patents__files=files["patents"], general__files=files["general"]), tmp_path / "out")
    for source in ("patents", "general"):
        got = [(d["id"], d["text"]) for d in read_docs(tmp_path / "out" / "cpt" / source)]
        assert got and got == [(d["id"], d["text"]) for d in read_docs(demo_build[0] / "cpt" / source)]


def truncated_gzip(path: Path, array: bool) -> Path:
    """Two thirds of a compressed file of 300 records: an interrupted download."""
    records = [
        {"id": str(n), "title": "标题", "content": f"第{n}条内容。" * 20, "dataType": "科技"} for n in range(300)
    ]
    if array:
        content = json.dumps(records, ensure_ascii=False).encode()
    else:
        content = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    packed = gzip.compress(content)
    path.write_bytes(packed[: len(packed) * 2 // 3])
    return path


@pytest.mark.parametrize("name", ["cut.jsonl.gz", "cut.json.gz"])
def test_truncated_gzip_keeps_what_came_before_and_counts_the_loss(tmp_path: Path, name: str) -> None:
    path = truncated_gzip(tmp_path / name, array=name == "cut.json.gz")
    skips = SkipLog()
    records = list(iter_corpus_records(path, skips))
    reason = "compressed stream truncated or corrupt (rest of the file unreadable)"
    assert 0 < len(records) < 300 and skips.counts[reason] == 1
    where = f"{path}: record {len(records)}" if name == "cut.json.gz" else f"{path}:{len(records) + 1}"
    assert skips.examples[reason][0].startswith(where)


def test_truncated_gzip_is_fatal_without_a_skip_log(tmp_path: Path) -> None:
    path = truncated_gzip(tmp_path / "cut.jsonl.gz", array=False)
    with pytest.raises(RecordError, match=r"cut\.jsonl\.gz:\d+: compressed stream truncated or corrupt"):
        list(iter_jsonl(path))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl.gz", gzip.compress(b""), r"empty\.jsonl\.gz: file is empty \(after decompression\)"),
        ("broken.jsonl.gz", b"not gzip at all", r"broken\.jsonl\.gz: not a readable gzip file"),
        ("table.csv.gz", gzip.compress(b"a,b\n1,2\n"), r"table\.csv\.gz: only JSON Lines may be gzip-compressed"),
    ],
)
def test_bad_gzip_inputs_are_one_line_errors(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(RecordError, match=message):
        list(iter_records(path, SkipLog()))


# --- bad input -------------------------------------------------------------------------------


def bad_input_config(**general: object) -> CptCorpusConfig:
    files = general.pop("files", [str(FIXTURES / "wudao_bad_items.json")])
    return demo_config(
        ipc=None,
        patents={"files": [str(FIXTURES / "patents_bad.jsonl")], "min_chars": 20},
        general={"files": files, "min_chars": 20},
    )


def test_bad_records_are_counted_with_file_and_line(tmp_path: Path) -> None:
    report = build_cpt_corpus(bad_input_config(), tmp_path, workers=1)
    patents = report.sources["patents"]
    assert patents.read == 8 and patents.kept == 3
    examples = {reason: msgs[0] for reason, msgs in patents.malformed.examples.items()}
    assert examples["not valid JSON"].startswith(f"{FIXTURES / 'patents_bad.jsonl'}:2: ")
    assert examples["not a JSON object"].startswith(f"{FIXTURES / 'patents_bad.jsonl'}:3: ")
    assert examples["missing publication_number or id"].startswith(f"{FIXTURES / 'patents_bad.jsonl'}:4: ")
    assert examples["malformed field 'title_localized'"].startswith(f"{FIXTURES / 'patents_bad.jsonl'}:5: ")
    assert examples["not UTF-8"].startswith(f"{FIXTURES / 'patents_bad.jsonl'}:7: ")
    assert patents.repaired.examples["invalid IPC code removed"][0].startswith(
        f"{FIXTURES / 'patents_bad.jsonl'}:6: invalid IPC code removed ('G06N 3/06X')"
    )
    general = report.sources["general"]
    assert dict(general.malformed.counts) == {
        "not a JSON object": 1,
        "missing content": 1,
        "malformed field 'content'": 1,
    }
    assert general.malformed.examples["missing content"][0].startswith(
        f"{FIXTURES / 'wudao_bad_items.json'}: record 2: "
    )
    assert general.kept == 2
    assert "| Patents | malformed | not valid JSON | 1 |" in report.markdown()


def test_truncated_json_array_counts_the_rest_as_unreadable(tmp_path: Path) -> None:
    config = bad_input_config(files=[str(FIXTURES / "wudao_truncated.json")])
    report = build_cpt_corpus(config, tmp_path, workers=1)
    general = report.sources["general"]
    assert general.kept == 1
    (example,) = general.malformed.examples["not valid JSON (rest of the file unreadable)"]
    assert example.startswith(f"{FIXTURES / 'wudao_truncated.json'}: record 1: ")


def test_strict_stops_at_the_first_bad_record(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match=r"patents_bad\.jsonl:2: not valid JSON"):
        build_cpt_corpus(bad_input_config(), tmp_path, strict=True, workers=1)
    assert not (tmp_path / "dataset_info.json").exists()
    assert not list((tmp_path / "cpt" / "patents").glob("*.jsonl"))


def test_missing_input_file_is_a_one_line_error(tmp_path: Path) -> None:
    config = demo_config(general={"files": [str(tmp_path / "nope.json")]})
    with pytest.raises(Exception, match=r"general\.files: input file not found: .*nope\.json"):
        build_cpt_corpus(config, tmp_path / "out", workers=1)


# --- CLI -------------------------------------------------------------------------------------


def test_cli_prepare_cpt(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    out = tmp_path / "prepared"
    assert cli_main(["prepare", "cpt", "--config", str(DEMO_CONFIG), "--out", str(out), "--workers", "1"]) == 0
    assert "| IPC definitions | 226 |" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("tokenizer: models/smollm2-135m-instruct\nsources: {}\n", encoding="utf-8")
    assert cli_main(["prepare", "cpt", "--config", str(bad), "--out", str(out)]) == 2
    assert f"error: {bad}: unknown key 'sources'" in capsys.readouterr().err


def test_llamafactory_pt_stage_reads_the_corpus(demo_build, embedded_model: Path, tmp_path: Path) -> None:
    """LLaMA-Factory's own loader (stage pt) reads the registered folder of shards."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from transformers import AutoTokenizer

    out, report = demo_build
    model_args, data_args, training_args, _, _ = get_train_args(
        {
            "model_name_or_path": str(embedded_model),
            "stage": "pt",
            "do_train": True,
            "finetuning_type": "lora",
            "dataset": "coretech_cpt",
            "dataset_dir": str(out),
            "cutoff_len": 256,
            "output_dir": str(tmp_path / "lf"),
            "overwrite_cache": True,
            "preprocessing_num_workers": 1,
            "report_to": "none",
        }
    )
    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    dataset = get_dataset(template, model_args, data_args, training_args, stage="pt", tokenizer=tokenizer)
    blocks = dataset["train_dataset"]
    # packed into 256-token blocks: the corpus's tokens plus one EOS per document
    expected = (report.total()["tokens"] + report.total()["entries"]) // 256
    assert abs(len(blocks) - expected) <= max(3, expected // 50)
    # the counts in the shards are what transformers' tokenizer gives for the same text
    sample = read_docs(out / "cpt" / "patents")[0]
    assert len(tokenizer(sample["text"], add_special_tokens=False)["input_ids"]) == sample["tokens"]
