"""Configs are the product: every YAML under configs/ (recursively) is checked as what it is.

* LLaMA-Factory recipes: every key is a field of LLaMA-Factory's argument dataclasses (and typed
  right), every dataset exists in the dataset_info.json the prepare step writes, the DeepSpeed
  config and model paths exist, and stage k+1 starts from stage k's output.
* Our own settings (pipelines, prepare_*.yaml) load into their dataclasses, which reject unknown keys.
* Every path a README names exists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from coretech.pipeline import load_pipeline
from coretech.pipeline.stages import load_prepare_settings, planned_datasets
from coretech.preflight import check_deepspeed_config, check_llamafactory_config, check_model_path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.relative_to(REPO) for p in (REPO / "configs").rglob("*.yaml"))
MODEL_DIRS = sorted(p.name for p in (REPO / "configs").iterdir() if p.is_dir() and (p / "cpt.yaml").exists())


def kind_of(path: Path) -> str:
    if path.parts[1] == "pipelines":
        return "pipeline"
    if path.name.startswith("prepare_"):
        return "prepare"
    if path.parts[1] == "eval":
        return "eval"
    data = yaml.safe_load((REPO / path).read_text(encoding="utf-8"))
    if "export_dir" in data:
        return "export"
    if "stage" in data:
        return "train"
    return "infer"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_there_are_configs_of_every_kind():
    kinds = {kind_of(p) for p in CONFIGS}
    assert {"pipeline", "prepare", "train", "export", "infer"} <= kinds
    assert MODEL_DIRS == ["qwen2.5-7b", "smollm2-135m"]


@pytest.mark.parametrize("path", CONFIGS, ids=str)
def test_config_is_valid(path: Path):
    kind = kind_of(path)
    if kind == "pipeline":
        spec = load_pipeline(path).spec
        for stage in spec.stages:
            assert stage.recipe.is_file(), f"{path}: stage {stage.name} recipe {stage.recipe} missing"
            if stage.merge:
                assert stage.merge.is_file()
        if spec.predict:
            assert spec.predict.recipe.is_file()
        for scheme in spec.evaluate.scheme if spec.evaluate else []:
            assert scheme.is_file()
        return
    if kind == "prepare":
        if path.name == "prepare_cpt.yaml":
            from coretech.data.cpt import load_cpt_config

            load_cpt_config(path)
        else:
            from coretech.data.sft import load_sft_config

            load_sft_config(path)
        return
    if kind == "eval":
        from coretech.eval.general import load_general_config

        load_general_config(path)
        return
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    lf_kind = "export" if kind in ("export", "infer") else "train"
    # CI has no GPU: the 7B recipes' bf16 is judged against the node by the pre-flight, not here.
    assert check_llamafactory_config(config, path, lf_kind, this_machine=False) == []
    if config.get("deepspeed"):
        assert check_deepspeed_config(Path(config["deepspeed"]), str(path)) == []
    model = str(config["model_name_or_path"])
    produced_by_a_stage = model.startswith("saves/")
    if not produced_by_a_stage and model != "models/smollm2-135m-instruct":  # the embedded model is made on demand
        assert check_model_path(model, str(path)) == []
    assert config.get("trust_remote_code", False) is False, "trust_remote_code stays off unless a recipe needs it"


@pytest.mark.parametrize(
    ("variant", "differences"),
    [
        ("ds_z3_small_config.json", {"zero_optimization.stage3_max_reuse_distance": 1e7}),
        (
            "ds_z3_offload_config.json",
            {
                "zero_optimization.offload_optimizer": {"device": "cpu", "pin_memory": True},
                "zero_optimization.offload_param": {"device": "cpu", "pin_memory": True},
            },
        ),
    ],
)
def test_deepspeed_variants_differ_from_zero3_only_where_documented(variant: str, differences: dict) -> None:
    """The variants stay ZeRO-3 twins of the node config: a change to one is made to all of them."""

    def flat(config: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in config.items():
            if isinstance(value, dict) and not key.startswith("offload_"):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    base = flat(json.loads(Path("configs/deepspeed/ds_z3_config.json").read_text()))
    other = flat(json.loads(Path("configs/deepspeed", variant).read_text()))
    changed = {key: other.get(key) for key in base.keys() | other.keys() if base.get(key) != other.get(key)}
    assert changed == differences
    assert other["zero_optimization.stage"] == 3
    assert variant in Path("configs/deepspeed/README.md").read_text()


@pytest.mark.parametrize("model_dir", MODEL_DIRS)
def test_stage_k_plus_1_starts_from_stage_k(model_dir: str):
    folder = Path("configs") / model_dir
    load = lambda name: yaml.safe_load((folder / name).read_text(encoding="utf-8"))  # noqa: E731
    cpt, merge = load("cpt.yaml"), load("merge_cpt.yaml")
    assert merge["model_name_or_path"] == cpt["model_name_or_path"]
    assert merge["adapter_name_or_path"] == cpt["output_dir"]
    previous = None
    for k in (1, 2, 3):
        stage = load(f"sft_stage{k}.yaml")
        assert stage["model_name_or_path"] == merge["export_dir"]
        assert stage.get("adapter_name_or_path") == previous
        assert stage["dataset"] == f"coretech_sft_stage{k}"
        assert stage.get("disable_shuffling") is True, "a curriculum stage keeps its easy → hard order"
        previous = stage["output_dir"]
    shuffled = load("sft_shuffled.yaml")
    assert shuffled["model_name_or_path"] == merge["export_dir"]
    assert "adapter_name_or_path" not in shuffled
    assert not shuffled.get("disable_shuffling", False)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parts[1] == "pipelines"], ids=str)
def test_every_dataset_a_recipe_names_is_produced_by_the_prepare_step(path: Path):
    spec = load_pipeline(path).spec
    produced = planned_datasets(spec, load_prepare_settings(spec))
    for stage in spec.stages:
        recipe = yaml.safe_load(stage.recipe.read_text(encoding="utf-8"))
        for name in str(recipe["dataset"]).split(","):
            assert name.strip() in produced, f"{stage.recipe}: dataset {name} is not produced by {path}"
    if spec.predict:
        assert set(spec.predict.datasets) <= produced


def test_demo_datasets_exist_in_the_dataset_info_the_prepare_steps_write(prepared_demo_data: Path, tmp_path: Path):
    """prepare, then prepare.rag (the demo sets data.rag): together they write every planned dataset."""
    import json
    import shutil

    from coretech.ground.rag import build_rag_datasets
    from coretech.ipc import load_scheme

    data = tmp_path / "data"
    shutil.copytree(prepared_demo_data, data)
    spec = load_pipeline("configs/pipelines/demo.yaml").spec
    assert spec.data.rag is not None and spec.evaluate is not None
    build_rag_datasets(data, spec.data.rag.k, load_scheme(spec.evaluate.scheme))
    info = json.loads((data / "dataset_info.json").read_text(encoding="utf-8"))
    planned = planned_datasets(spec, load_prepare_settings(spec))
    assert "coretech_sft_shuffled_rag" in planned
    assert planned <= set(info)
    for name, entry in info.items():
        assert (data / entry["file_name"]).exists(), f"{name}: {entry['file_name']} missing"


_PATH_IN_README = re.compile(r"`((?:configs|data|code|tests|benchmarks|docs|\.ci)/[^`\s*]+?)`")


READMES = sorted(
    p.relative_to(REPO)
    for p in [
        REPO / "README.md",
        *REPO.glob("configs/**/README.md"),
        *REPO.glob("docs/*.md"),
        *REPO.glob("data/**/README.md"),
    ]
    if p.exists()
)


@pytest.mark.parametrize("readme", READMES, ids=str)
def test_every_path_a_readme_names_exists(readme: Path):
    text = (REPO / readme).read_text(encoding="utf-8")
    missing = [m for m in _PATH_IN_README.findall(text) if not (REPO / m.rstrip("/.,:")).exists() and "<" not in m]
    # Outputs of commands (data/prepared) and folders users fill with downloaded data (data/raw, data/general).
    missing = [m for m in missing if not m.startswith(("data/prepared", "data/raw", "data/general"))]
    assert missing == [], f"{readme} names paths that do not exist: {missing}"
