"""The pipeline runner: a pipeline file (``configs/pipelines/*.yaml``) run as steps into a run folder.

    prepare (in-process) → stage 1 … stage n (``llamafactory-cli train`` under torchrun, each from
    the previous stage's result; ``llamafactory-cli export`` where a full model is needed)
    → predict (every listed model on every test set) → evaluate → report

Modules: ``spec`` (the pipeline file and overrides), ``stages`` (recipes resolved and chained, the
pre-flight), ``context`` (the Step interface), ``training`` / ``steps`` (the steps), ``runner``
(skip / record / dry-run / timing / multi-node for every step), ``report`` (``report.md``) and
``single`` (``coretech train``: one recipe, no manifest). The run folder itself (manifest,
fingerprints, lock, which model a run produced) is ``coretech.runs``.
"""

from coretech.pipeline.runner import plan_step, run_pipeline, validate_pipeline
from coretech.pipeline.single import resolve_recipe, train_recipe
from coretech.pipeline.spec import LoadedPipeline, PipelineSpec, PredictModel, load_pipeline
from coretech.pipeline.stages import preflight, resolve_stages
from coretech.pipeline.training import refuse_if_still_running
from coretech.runs import resolve_run_model, run_lock

__all__ = [
    "LoadedPipeline",
    "PipelineSpec",
    "PredictModel",
    "load_pipeline",
    "plan_step",
    "preflight",
    "refuse_if_still_running",
    "resolve_recipe",
    "resolve_run_model",
    "resolve_stages",
    "run_lock",
    "run_pipeline",
    "train_recipe",
    "validate_pipeline",
]
