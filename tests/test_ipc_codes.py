"""IPC symbols: parsing, canonical form, hierarchy and extraction from the answers models really write."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coretech.ipc import LEVELS, InvalidIpcCode, IpcCode, canonical_ipc, extract_ipc_codes, parse_ipc


def extracted(text: str) -> list[str]:
    return [str(code) for code in extract_ipc_codes(text)]


# --- parse / canonical -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("G06F 16/00", "G06F16/00"),
        ("G06F16/00", "G06F16/00"),
        ("G06F  16 / 00", "G06F16/00"),
        ("A61B34", "A61B34/00"),  # main group written without /00
        ("G06K9", "G06K9/00"),
        ("G06N 3/045", "G06N3/045"),  # three-digit subgroup
        ("H04W 28/0925", "H04W28/0925"),  # four-digit subgroup
        ("Ｇ０６Ｆ　１６／００", "G06F16/00"),  # full-width letters, digits, space and slash
        ("G06F0016000000", "G06F16/00"),  # Google Patents' 14-character form
        ("H04W0028092500", "H04W28/0925"),
        ("A61B0034100000", "A61B34/10"),  # a trailing zero of a two-digit subgroup is kept
        ("g06f 16/00", "G06F16/00"),  # parse_ipc accepts lower case for a single symbol
        ("G06F", "G06F"),
        ("G06", "G06"),
        ("G", "G"),
        ("G06F 0016/00", "G06F16/00"),  # leading zeros of the main group go
        ("H01M010/052", "H01M10/052"),  # zero-padded main group, as literature tables write it
        ("H01M 010 / 052", "H01M10/052"),
        ("Ｈ０１Ｍ０１０／０５２", "H01M10/052"),
        ("G06F0000000000", "G06F"),  # a subclass padded to WIPO's 14 characters
        ("A01B0001020000", "A01B1/02"),  # WIPO title list: subgroup /02 keeps its two digits
        ("  G06F 16/00  ", "G06F16/00"),
    ],
)
def test_canonical_form(written: str, canonical: str) -> None:
    assert canonical_ipc(written) == canonical
    assert str(parse_ipc(written)) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I01A",
        "G06F16/0",
        "G6F16/00",
        "G06FF",
        "USB3",
        "H2O",
        "G06F 16/00 extra",
        "包括G06N",
        "GO6Q40/00",
        "G10L15-00",
    ],
)
def test_parse_rejects_non_symbols(text: str) -> None:
    with pytest.raises(InvalidIpcCode):
        parse_ipc(text)


def test_invalid_ipc_code_is_a_value_error() -> None:
    assert issubclass(InvalidIpcCode, ValueError)


# --- hierarchy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "level"),
    [
        ("G", "section"),
        ("G06", "class"),
        ("G06F", "subclass"),
        ("G06F16/00", "main_group"),
        ("G06F16/245", "subgroup"),
        ("G06N3/045", "subgroup"),
    ],
)
def test_level(code: str, level: str) -> None:
    assert parse_ipc(code).level == level


def test_truncate_to_every_level() -> None:
    code = parse_ipc("G06N3/045")
    assert [str(code.truncate(level)) for level in LEVELS] == ["G", "G06", "G06N", "G06N3/00", "G06N3/045"]


def test_truncate_below_own_level_is_none() -> None:
    assert parse_ipc("G06F").truncate("main_group") is None
    assert parse_ipc("G06F16/00").truncate("subgroup") is None
    assert parse_ipc("G06F16/00").truncate("main_group") == parse_ipc("G06F16/00")


def test_ancestors_top_first_without_self() -> None:
    assert [str(a) for a in parse_ipc("H04W28/0925").ancestors()] == ["H", "H04", "H04W", "H04W28/00"]
    assert [str(a) for a in parse_ipc("G06F16/00").ancestors()] == ["G", "G06", "G06F"]
    assert parse_ipc("G").ancestors() == []


def test_subclass_code() -> None:
    assert parse_ipc("G06N3/08").subclass_code == "G06N"
    assert parse_ipc("G06").subclass_code is None


def test_scheme_order() -> None:
    """Main groups sort numerically and subgroups as decimal fractions, parents first."""
    codes = ["G06F16/00", "G06F9/50", "G06N3/08", "G06N3/045", "G06N3/04", "G06N3/063", "G06F9/00", "G06F"]
    ordered = [str(c) for c in sorted(parse_ipc(c) for c in codes)]
    assert ordered == ["G06F", "G06F9/00", "G06F9/50", "G06F16/00", "G06N3/04", "G06N3/045", "G06N3/063", "G06N3/08"]


def test_codes_are_hashable_values() -> None:
    assert parse_ipc("G06F 16/00") == parse_ipc("G06F0016000000")
    assert len({parse_ipc("G06F 16/00"), parse_ipc("G06F16/00"), IpcCode("G", "06", "F", "16", "00")}) == 1


# --- extraction from free text -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "codes"),
    [
        # spacing variants
        ("分类号为G06F 16/00。", ["G06F16/00"]),
        ("分类号为G06F16/00。", ["G06F16/00"]),
        ("IPC: G06F  16 / 00", ["G06F16/00"]),
        ("IPC:\u00a0G06F\u00a016/00", ["G06F16/00"]),  # no-break spaces
        # main group without /00
        ("涉及A61B34和G06K9两个大组", ["A61B34/00", "G06K9/00"]),
        ("codes A61B34, G06K9.", ["A61B34/00", "G06K9/00"]),
        # subgroups with three and four digits
        ("G06N 3/045（组合网络）", ["G06N3/045"]),
        ("H04W 28/0925 and H01M10/0525", ["H04W28/0925", "H01M10/0525"]),
        # full-width letters and digits
        ("该领域涉及的IPC分类号：Ｇ０６Ｎ３／０８；Ｂ６０Ｌ５３／００", ["G06N3/08", "B60L53/00"]),
        # bold markdown
        ("**G06N3/08**（学习方法）和 **H04W 4/40**", ["G06N3/08", "H04W4/40"]),
        ("- **IPC**: **A61B 34/30**", ["A61B34/30"]),
        # codes followed by titles in brackets (Chinese and ASCII brackets)
        ("G06N3/08（学习方法）；G06F16/00（信息检索）", ["G06N3/08", "G06F16/00"]),
        ("IPC codes: G06N3/08 (Learning methods); G06F16/35 [Clustering]", ["G06N3/08", "G06F16/35"]),
        ("G06V20/56【车辆外部环境】", ["G06V20/56"]),
        # ranges give both ends
        ("A61B 1/00-A61B 5/00", ["A61B1/00", "A61B5/00"]),
        ("A61B 1/00 - 5/00", ["A61B1/00", "A61B5/00"]),  # abbreviated second end
        ("B60L 53/00–B60L 58/00", ["B60L53/00", "B60L58/00"]),  # en dash
        ("H04W4/00至H04W4/40", ["H04W4/00", "H04W4/40"]),
        ("A61B 5/00~5/0205", ["A61B5/00", "A61B5/0205"]),
        # Google Patents' 14-character form
        ("G06F0016000000", ["G06F16/00"]),
        ("cpc: H04W0028092500, A61B0034200000", ["H04W28/0925", "A61B34/20"]),
        # subclass alone
        ("属于G06F和H04W小类", ["G06F", "H04W"]),
        # Chinese text runs straight into codes
        ("分类号G06F16/00和H04W4/40", ["G06F16/00", "H04W4/40"]),
        ("第G06F16/00号", ["G06F16/00"]),
        # separators without spaces
        ("G06N3/08,G06N3/04;G06N3/045、G06N3/063", ["G06N3/08", "G06N3/04", "G06N3/045", "G06N3/063"]),
        # a code at the very end and start of the text
        ("G06T7/00", ["G06T7/00"]),
        # literature-table cells: subclasses run into Chinese text, zero-padded groups
        ("包括G06N、A61B", ["G06N", "A61B"]),
        ("涉及H04W", ["H04W"]),
        ("主要包括G06N、A61B等小类，并涉及H04W。", ["G06N", "A61B", "H04W"]),
        ("H01M010/052（锂蓄电池）", ["H01M10/052"]),
        ("H01M 010/052、B60L053/00", ["H01M10/052", "B60L53/00"]),
        ("该专利涉及IPC分类号包括：\nH04W24/02：Arrangements for …；\nH01M010/052", ["H04W24/02", "H01M10/052"]),
        # full-width and inner spaces mixed with plain text
        ("分类号Ｇ０６Ｆ　１６／００和G06F 16/30", ["G06F16/00", "G06F16/30"]),
        # WIPO's 14-character form, a padded subclass included
        ("G06F0016000000、G06F0000000000", ["G06F16/00", "G06F"]),
        # teacher-written prose with codes in bold
        ("- **H01L** — 半导体器件\n- **G11C13/00** — 存储器", ["H01L", "G11C13/00"]),
    ],
)
def test_extracts_every_written_form(text: str, codes: list[str]) -> None:
    assert extracted(text) == codes


@pytest.mark.parametrize(
    "text",
    [
        "USB3",
        "H2O",
        "GPT4",
        "GPT-4",
        "ISO9001",
        "5G",
        "支持5G和USB3.0接口，符合ISO9001标准，使用GPT4生成，H2O冷却",
        "RS232 MP3 A4纸 B2B C2C G20峰会 H264 A380 F16战机 M2M P2P",
        "SHA256 AES128 H265 E5 B52",
        "G06",  # a class alone is too ambiguous in prose
        "I01A X99Z1/00",  # no such sections
    ],
)
def test_words_that_look_similar_are_not_codes(text: str) -> None:
    assert extracted(text) == []


def test_each_code_once_in_order_of_first_appearance() -> None:
    text = "H04W4/40；G06F16/00；H04W 4/40；G06F0016000000；A61B34"
    assert extracted(text) == ["H04W4/40", "G06F16/00", "A61B34/00"]


def test_extraction_survives_model_babble() -> None:
    answer = (
        "好的！根据您的问题，人工智能芯片领域通常涉及以下IPC分类号：\n"
        "1. **G06N 3/063**（使用电子装置实现神经网络）\n"
        "2. G06F15/78（包含单个中央处理器的计算机）\n"
        "此外，该领域还与5G通信、USB3接口有关，参见ISO9001。希望对您有帮助！"
    )
    assert extracted(answer) == ["G06N3/063", "G06F15/78"]


def test_extracted_codes_are_ipc_code_objects() -> None:
    (code,) = extract_ipc_codes("G06N3/045")
    assert isinstance(code, IpcCode)
    assert code.level == "subgroup"
    assert code.subclass_code == "G06N"


def test_cli_prints_codes_one_a_line(repo_root) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "coretech", "ipc", "extract"],
        input="IPC: G06F 16/00（信息检索）；Ｈ０４Ｗ４／４０；USB3；G06F0016000000；A61B 1/00-5/00\n",
        capture_output=True,
        text=True,
        cwd=repo_root,
        check=True,
        timeout=60,
    )
    assert result.stdout.splitlines() == ["G06F16/00", "H04W4/40", "A61B1/00", "A61B5/00"]
