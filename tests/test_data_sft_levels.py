"""Questions at every level of the tables: domain, level-1 area and technology."""

from __future__ import annotations

import csv
from pathlib import Path

from coretech.data.sft.qa import Glossary, RenderLog, RenderSettings, render_entry
from coretech.data.sft.tables import TableLog, read_office_table, read_paper_table
from coretech.ipc import IpcScheme

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data" / "samples"


def settings(levels: list[str]) -> RenderSettings:
    return RenderSettings(
        languages=["zh"],
        phrasings={"zh": 5},
        tasks=["ipc", "tech"],
        levels=levels,
        tech_details=True,
        code_titles=False,
        keep_codes_missing_from_scheme=True,
    )


def render(entries, levels):
    scheme = IpcScheme.load([SAMPLES / "ipc_scheme_en.xml", SAMPLES / "ipc_titles_zh.csv"])
    return [r for e in entries for r in render_entry(e, scheme, Glossary(), settings(levels), 1, RenderLog())]


def test_office_table_questions_per_technology_and_area():
    entries = read_office_table(SAMPLES / "key_tech_office.csv", "office", TableLog())
    records = render([e for e in entries if e.domain == "人工智能"], ["domain", "area", "technology"])
    chip_ipc = [r for r in records if r.subject == "智能芯片" and r.task == "ipc"]
    assert chip_ipc and {r.level for r in chip_ipc} == {"technology"}
    assert "智能芯片涉及哪些IPC分类号？" in {r.instruction for r in chip_ipc}
    assert chip_ipc[0].output.splitlines() == ["智能芯片涉及的IPC分类号：", "G06N3/063", "H01L25/00"]
    chip_tech = [r for r in records if r.subject == "智能芯片" and r.task == "tech"]
    assert chip_tech[0].output.splitlines() == ["智能芯片包含的关键技术：", "1. 神经网络处理器", "2. 存算一体芯片"]
    area = [r for r in records if r.subject == "人工智能硬件平台" and r.task == "tech"]
    assert {r.level for r in area} == {"area"}
    assert "人工智能硬件平台包含哪些关键技术？" in {r.instruction for r in area}
    assert area[0].output.splitlines()[1:] == [
        "1. 智能芯片（神经网络处理器、存算一体芯片）",
        "2. 智能计算服务器（异构计算、液冷散热）",
    ]
    domain = [r for r in records if r.level == "domain" and r.task == "ipc"]
    assert domain and all(r.subject == "人工智能" for r in domain)
    assert all(r.level == "domain" for r in render(entries, ["domain"]))


def test_literature_rows_with_one_technology_give_codes_per_technology(tmp_path):
    path = tmp_path / "papers.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["领域", "关键核心技术", "IPC分类号及其描述"])
        writer.writerow(["手术机器人", "手术导航（光学定位）", "A61B34/20（手术导航系统）"])
        writer.writerow(["", "力反馈", "包括A61B34/30、B25J"])
        writer.writerow(["无人机", "飞行控制；图像传输", "G05D1；H04N7/18"])
    log = TableLog()
    entries = read_paper_table(path, "papers", log)
    assert log.notes["literature rows giving codes per technology"] == 2
    records = render(entries, ["domain", "technology"])
    force = [r for r in records if r.subject == "力反馈" and r.task == "ipc"]
    assert force and force[0].output.splitlines()[1:] == ["A61B34/30", "B25J"]
    navigation = [r for r in records if r.subject == "手术导航" and r.task == "ipc"]
    assert navigation[0].output.splitlines()[1:] == ["A61B34/20"]
    # the domain answer still has every code; a multi-technology row gives none per technology
    surgery = next(r for r in records if r.subject == "手术机器人" and r.task == "ipc")
    assert surgery.output.splitlines()[1:] == ["A61B34/20", "A61B34/30", "B25J"]
    assert not [r for r in records if r.subject == "飞行控制" and r.task == "ipc"]
