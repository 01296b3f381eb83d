"""The shape every pipeline step has, and what the runner hands each of them.

Like torchtune's ``FTRecipeInterface``, one interface for every step: a name, an input fingerprint
(named parts, so a plan can say *which* input changed), ``run`` and a summary. The runner
(``pipeline.runner``) does skip / record / dry-run / timing / following node 0 once for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coretech.launch import LaunchSettings
from coretech.pipeline.spec import LoadedPipeline, PipelineSpec
from coretech.runs import Manifest, content_digest, relative_paths


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class RunContext:
    loaded: LoadedPipeline
    run_dir: Path  # resolved
    manifest: Manifest
    launch: LaunchSettings
    dry_run: bool = False
    fresh: bool = False  # --fresh: everything was deleted first (in a dry-run: would be)
    timings: dict[str, float] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)  # step key → fingerprint, for chaining
    metrics: dict[str, Any] | None = None
    stages: list[Any] = field(default_factory=list)  # the resolved stages (pipeline.stages.ResolvedStage)

    @property
    def spec(self) -> PipelineSpec:
        return self.loaded.spec

    @property
    def is_main_node(self) -> bool:
        return self.launch.node_rank == 0

    def portable(self, value: Any) -> Any:
        """``value`` with run-folder and repository paths written relative (``<run>/…``, ``<repo>/…``)."""
        return relative_paths(value, {"run": self.run_dir, "repo": self.loaded.repo})

    def base_model_digest(self) -> str:
        """The base model by content when it is a local folder (sampled for big shards), else its hub id."""
        path = Path(self.spec.base_model)
        return content_digest(path) if path.exists() else f"hub:{self.spec.base_model}"


class Step:
    """One pipeline step. Subclasses set ``section``/``name`` and implement the methods below."""

    section = "steps"  # the manifest section: "stages" for training stages, "steps" for the rest
    name = ""
    kind = ""  # prepare, train, merge, predict, evaluate
    all_nodes = False  # training runs on every node; everything else on node 0 only

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def label(self) -> str:
        return self.name if self.kind in ("prepare", "evaluate") else f"{self.name} ({self.kind})"

    def fingerprint_parts(self, ctx: RunContext) -> dict[str, Any]:
        """What the step's result depends on, by content and never by location."""
        raise NotImplementedError

    def outputs(self) -> list[Path]:
        """Finished work this step owns: moved aside (never deleted) when its fingerprint changes."""
        return []

    def records(self) -> list[Path]:
        """The files that say how the outputs were made (config, command, log): moved aside with them."""
        return []

    def complete(self, ctx: RunContext) -> bool:
        """Whether the step's result is on disk (a manifest entry alone is not enough)."""
        return True

    def resumable(self, ctx: RunContext) -> bool:
        """Whether a partial result of the same inputs can be continued (a checkpoint, a partial file)."""
        return False

    def describe(self, ctx: RunContext) -> None:
        """Dry-run: write the step's resolved files and print its command; launch nothing."""

    def run(self, ctx: RunContext, fp: str) -> dict[str, Any]:
        """Do the work; return what the manifest entry records besides status and fingerprint."""
        raise NotImplementedError

    def summary(self, entry: dict[str, Any]) -> str:
        """One line for the log once the step is done."""
        return f"done in {format_seconds(entry.get('seconds'))}"

    def after(self, ctx: RunContext, entry: dict[str, Any]) -> None:
        """Bookkeeping after the step ran or was skipped (e.g. which model a stage produced)."""
