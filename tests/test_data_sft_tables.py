"""Readers of the SFT sources: office hierarchy, literature cells, alpaca/sharegpt, and their error reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from openpyxl import Workbook

from coretech.data.records import RecordError, SkipLog
from coretech.data.sft.imports import detect_format, read_alpaca, read_sharegpt
from coretech.data.sft.qa import TEMPLATES
from coretech.data.sft.subjects import domain_from_question
from coretech.data.sft.tables import (
    TableLog,
    parse_code_cell,
    parse_office_answer,
    parse_technologies,
    read_office_table,
    read_paper_table,
)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def codes_of(items) -> list[str]:
    return [str(c.code) for c in items]


# --- office hierarchy ------------------------------------------------------------------------

OFFICE_ANSWER = """1.人工智能硬件平台
1.智能芯片
技术方向：神经网络处理器、存算一体芯片
分类号：G06N3/063、H01L25/00
2.智能计算服务器
技术方向：异构计算
分类号：H05K7/20
2.人工智能基础软件
1.深度学习框架
分类号：G06N3/08"""


def test_office_answer_levels_directions_and_codes():
    log = TableLog()
    technologies, domain_codes = parse_office_answer(OFFICE_ANSWER, "t.csv:2", log)
    assert [(t.area, t.name) for t in technologies] == [
        ("人工智能硬件平台", "智能芯片"),
        ("人工智能硬件平台", "智能计算服务器"),
        ("人工智能基础软件", "深度学习框架"),
    ]
    assert technologies[0].details == ["神经网络处理器", "存算一体芯片"]
    assert codes_of(technologies[0].codes) == ["G06N3/063", "H01L25/00"]
    assert codes_of(technologies[2].codes) == ["G06N3/08"]
    assert domain_codes == []
    assert log.skips.total == 0 and log.invalid == []


def test_office_answer_explicit_numbering_styles_and_full_width_punctuation():
    answer = "一、感知\n1.1 激光雷达\n分类号：Ｇ０１Ｓ１７／８９；G06V 20/56\n（2）视觉感知\n二、决策\n1.2 自动驾驶决策"
    technologies, _ = parse_office_answer(answer, "t.csv:2", TableLog())
    assert [(t.area, t.name) for t in technologies] == [
        ("感知", "激光雷达"),
        ("感知", "视觉感知"),
        ("决策", "自动驾驶决策"),
    ]
    assert codes_of(technologies[0].codes) == ["G01S17/89", "G06V20/56"]


def test_office_answer_without_level_one_and_codes_for_the_whole_domain():
    answer = "分类号：B25J\n1.机器人控制系统\n2.机器人感知\n3.协作安全"
    technologies, domain_codes = parse_office_answer(answer, "t.csv:2", TableLog())
    assert [(t.area, t.name) for t in technologies] == [
        ("", "机器人控制系统"),
        ("", "机器人感知"),
        ("", "协作安全"),
    ]
    assert codes_of(domain_codes) == ["B25J"]


def test_unreadable_answer_line_is_counted_with_file_row_and_answer_line():
    log = TableLog()
    parse_office_answer("1.智能芯片\n这一行不是任何格式\n分类号：G06N3/063", "t.csv:7", log)
    assert log.skips.counts["unreadable line in answer"] == 1
    assert log.skips.examples["unreadable line in answer"][0].startswith("t.csv:7 (answer line 2)")


def test_office_table_reports_rows_with_file_and_line(tmp_path: Path):
    path = write_csv(
        tmp_path / "office.csv",
        ["question", "answer"],
        [
            ["人工智能领域的关键核心技术有哪些？", OFFICE_ANSWER],  # a multi-line cell: lines 2-11
            ["", "1.智能芯片"],  # line 12: empty question
            ["量子信息领域的关键核心技术有哪些？", "没有编号，也没有分类号"],  # line 13
            ["光伏发电领域的关键核心技术有哪些？", "1.组件封装\n分类号：H02S40/00、HO2J3/00"],  # line 14
        ],
    )
    log = TableLog()
    entries = read_office_table(path, "office", log)
    assert [e.domain for e in entries] == ["人工智能", "光伏发电"]
    assert entries[0].location == f"{path}:2"
    assert entries[1].location == f"{path}:14"
    assert log.skips.examples["empty question or answer"] == [f"{path}:12: empty question or answer"]
    assert log.skips.examples["unreadable line in answer"] == [
        f"{path}:13 (answer line 1): unreadable line in answer (没有编号，也没有分类号)"
    ]
    assert log.skips.examples["no technologies or IPC codes in the answer"] == [
        f"{path}:13: no technologies or IPC codes in the answer"
    ]
    assert log.invalid == [f"{path}:14 (answer line 2): 'HO2J3/00' is not an IPC symbol"]


def test_office_table_missing_column_is_fatal_naming_the_file(tmp_path: Path):
    path = write_csv(tmp_path / "office.csv", ["question", "reply"], [["a", "b"]])
    with pytest.raises(RecordError, match=r"office\.csv:1: missing column 'answer'"):
        read_office_table(path, "office", TableLog())


# --- literature cells ------------------------------------------------------------------------


def test_technologies_split_on_top_level_separators_keeping_bracketed_details():
    cell = "1. 手术导航（光学定位、电磁定位）；主从遥操作控制;力反馈(触觉；振动)\n- 影像配准"
    technologies = parse_technologies(cell)
    assert [(t.name, t.details) for t in technologies] == [
        ("手术导航", ["光学定位", "电磁定位"]),
        ("主从遥操作控制", []),
        ("力反馈", ["触觉", "振动"]),
        ("影像配准", []),
    ]


def test_code_cell_with_descriptions_and_mixed_punctuation():
    log = TableLog()
    codes = parse_code_cell(
        "A61B34（手术导航）；B25J (机械手装置); G06F 16/00 信息检索、Ｈ０４Ｗ４／４０", "p.csv:3", log
    )
    assert codes_of(codes) == ["A61B34/00", "B25J", "G06F16/00", "H04W4/40"]
    assert [c.description for c in codes] == ["手术导航", "机械手装置", "信息检索", ""]
    assert log.invalid == []


def test_code_cell_grouped_lines_keep_their_group_label():
    cell = "航行控制类：G05D1（运载工具的位置控制）、B63H25（操舵）\n船体与平台类:B63B35（特殊用途船舶）"
    codes = parse_code_cell(cell, "p.csv:3", TableLog())
    assert [(str(c.code), c.group) for c in codes] == [
        ("G05D1/00", "航行控制类"),
        ("B63H25/00", "航行控制类"),
        ("B63B35/00", "船体与平台类"),
    ]


def test_invalid_symbols_are_reported_not_kept_not_silently_dropped():
    log = TableLog()
    codes = parse_code_cell("GO6Q40/00（金融）；G10L15-00；G06Q40/00（金融）；区块链专利", "p.xlsx:9", log)
    assert codes_of(codes) == ["G06Q40/00"]
    assert log.invalid == [
        "p.xlsx:9: 'GO6Q40/00' is not an IPC symbol",
        "p.xlsx:9: 'G10L15-00' is not an IPC symbol",
        "p.xlsx:9: '区块链专利' is not an IPC symbol",
    ]


def test_invalid_symbol_is_fatal_in_strict_mode():
    log = TableLog(skips=SkipLog(strict=True))
    with pytest.raises(RecordError, match=r"^p\.xlsx:9: 'GO6Q40/00' is not an IPC symbol$"):
        parse_code_cell("GO6Q40/00", "p.xlsx:9", log)


def test_paper_xlsx_rows_merged_cells_and_row_numbers(tmp_path: Path):
    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["领域", "关键核心技术", "IPC分类号及其描述"])
    sheet.append(["无人船领域", "自主航行控制；环境感知（激光雷达、视觉）", "航行控制类：G05D1（位置控制）"])
    sheet.append([None, "路径规划", "G01C21（导航）"])  # merged 领域 cell
    sheet.append(["金融科技", "智能风控", "GO6Q40/00（金融）；G06Q40/00（金融）"])
    sheet.append(["基因编辑", None, None])
    sheet.merge_cells("A2:A3")
    path = tmp_path / "papers.xlsx"
    workbook.save(path)
    log = TableLog()
    entries = read_paper_table(path, "papers", log)
    assert [e.domain for e in entries] == ["无人船", "金融科技"]
    boat = entries[0]
    assert [t.name for t in boat.technologies] == ["自主航行控制", "环境感知", "路径规划"]
    assert codes_of(boat.all_codes()) == ["G05D1/00", "G01C21/00"]
    assert log.notes["rows continuing the 领域 above (merged cell)"] == 1
    assert log.invalid == [f"{path}:4: 'GO6Q40/00' is not an IPC symbol"]
    assert log.skips.examples["no technologies and no IPC codes"] == [f"{path}:5: no technologies and no IPC codes"]


def test_paper_table_first_row_without_domain_is_skipped_with_its_line(tmp_path: Path):
    path = write_csv(tmp_path / "p.csv", ["领域", "关键核心技术", "IPC分类号及其描述"], [["", "知识图谱", "G06N5/00"]])
    log = TableLog()
    assert read_paper_table(path, "papers", log) == []
    assert log.skips.examples["empty 领域"] == [f"{path}:2: empty 领域"]


def test_the_sample_tables_read_the_same_from_xlsx_and_csv(samples: Path):
    from_xlsx = read_paper_table(samples / "key_tech_papers.xlsx", "p", TableLog())
    from_csv = read_paper_table(samples / "key_tech_papers.csv", "p", TableLog())
    assert [(e.domain, [t.name for t in e.technologies], codes_of(e.all_codes())) for e in from_xlsx] == [
        (e.domain, [t.name for t in e.technologies], codes_of(e.all_codes())) for e in from_csv
    ]
    assert len(from_xlsx) >= 10
    office = read_office_table(samples / "key_tech_office.csv", "o", TableLog())
    assert 8 <= len(office) <= 10 and all(e.areas() for e in office)


# --- domains ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "domain"),
    [
        ("人工智能领域的关键核心技术有哪些？", "人工智能"),
        ("新能源汽车产业有哪些关键核心技术？", "新能源汽车"),
        ("请列举智慧医疗的关键技术。", "智慧医疗"),
        ("Which IPC codes does the field of blockchain involve?", "blockchain"),
        ("Which IPC codes does the artificial intelligence field involve?", "artificial intelligence"),
        ("What is the weather like?", ""),
    ],
)
def test_domain_from_question(question: str, domain: str):
    assert domain_from_question(question) == domain


def test_every_own_phrasing_gives_back_its_domain():
    """Our records, re-imported as alpaca, keep their domain: the split groups them correctly."""
    for task in TEMPLATES.values():
        for language, templates in task.items():
            subject = "人工智能" if language == "zh" else "artificial intelligence"
            for instruction, query in templates:
                if not query:
                    assert domain_from_question(instruction.format(domain=subject)) == subject, instruction


# --- alpaca / sharegpt -----------------------------------------------------------------------


def test_alpaca_import_task_domain_and_reported_skips(tmp_path: Path):
    rows = [
        {"instruction": "区块链领域涉及哪些IPC分类号？", "input": "", "output": "H04L9/00", "task_type": "IPC_TASK"},
        {
            "instruction": "Which key technologies does this technical field contain?",
            "input": "smart agriculture",
            "output": "1. precision irrigation",
        },
        {"instruction": "x", "input": "", "output": "y", "task_type": "TRANSLATION"},
        {"instruction": "q", "input": "", "output": "a", "history": [["q0", "a0"]]},
        {"instruction": "", "input": "", "output": "a"},
    ]
    path = tmp_path / "extra.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\nnot json\n", encoding="utf-8")
    log = TableLog()
    records = read_alpaca(path, "extra", log)
    assert [(r.task, r.domain, r.location) for r in records] == [
        ("ipc", "区块链", f"{path}:1"),
        ("tech", "smart agriculture", f"{path}:2"),
    ]
    assert log.skips.examples["unknown task_type"] == [f"{path}:3: unknown task_type (TRANSLATION)"]
    assert log.skips.counts["multi-turn history (only single-turn samples are imported)"] == 1
    assert log.skips.examples["empty instruction or output"] == [f"{path}:5: empty instruction or output"]
    assert log.skips.examples["not valid JSON"][0].startswith(f"{path}:6: not valid JSON")


def test_sharegpt_single_turns_are_imported_and_multi_turns_reported(tmp_path: Path):
    conversations = [
        {
            "conversations": [
                {"from": "system", "value": "你是专利助手"},
                {"from": "human", "value": "无人机领域涉及哪些IPC分类号？"},
                {"from": "gpt", "value": "B64U10/00：无人机的类型"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
                {"role": "assistant", "content": "d"},
            ]
        },
    ]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(conversations, ensure_ascii=False), encoding="utf-8")
    assert detect_format(path) == "sharegpt"
    log = TableLog()
    records = read_sharegpt(path, "chat", log)
    assert len(records) == 1
    assert (records[0].system, records[0].task, records[0].domain) == ("你是专利助手", "ipc", "无人机")
    assert log.skips.examples["not a single user/assistant turn"] == [
        f"{path}: record 1: not a single user/assistant turn"
    ]


def test_detect_format(samples: Path, tmp_path: Path):
    assert detect_format(samples / "key_tech_office.csv") == "office"
    assert detect_format(samples / "key_tech_papers.csv") == "papers"
    assert detect_format(samples / "key_tech_papers.xlsx") == "papers"
    assert detect_format(samples / "key_tech_extra_alpaca.jsonl") == "alpaca"
    other = write_csv(tmp_path / "other.csv", ["a", "b"], [["1", "2"]])
    with pytest.raises(RecordError, match=r"other\.csv:1: neither an office table"):
        detect_format(other)
