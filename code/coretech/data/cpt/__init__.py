"""The continued-pretraining corpus behind ``coretech prepare cpt``.

Owns the build from the raw sources users download (an IPC scheme, patents, WuDao) to datasets
LLaMA-Factory's ``pt`` stage reads. Per source: render documents, clean them, drop what is too
short, too long, in another language or a duplicate (exact hash, then MinHash LSH), count tokens
with the target model's tokenizer, write shards. Then mix the sources by token budget.

Scale decides the shape. Records stream through a bounded window of worker processes (results
come back in input order, so output does not depend on the number of workers); the dedup index
lives on disk; shards are written whole or not at all, each followed by a marker with its stats,
so an interrupted build resumes after the last finished shard. Memory does not grow with the
corpus. Every record that does not become a document is counted with its reason.

Layout under ``out_dir`` (shared with the SFT builder, which registers its own datasets)::

    dataset_info.json          coretech_cpt (the mix) and coretech_cpt_{ipc,patents,general}
    cpt/{ipc,patents,general}/part-NNNNN.jsonl   cleaned documents per source
    cpt/mixed/<source>-NNNNN.jsonl               the token-budgeted mix
    cpt/stats.md, cpt/stats.json
    cpt/state/                 fingerprints, one marker per finished shard, dedup.sqlite

LLaMA-Factory 0.9.5 loads every file of a dataset folder and requires one file type, so the data
folders hold nothing but finished ``.jsonl`` shards; temporary files live in ``cpt/state/tmp``.

The package, one module per concern: ``settings`` (the YAML), ``sources`` / ``patents`` / ``ipc_docs``
(records to documents), ``workers`` (the process pool), ``shards`` (files written whole or not at all),
``mix`` (token budgets), ``report`` (stats.md / stats.json) and ``build`` (the orchestration).
"""

from coretech.data.cpt.build import _Build, available_cores, build_cpt_corpus
from coretech.data.cpt.ipc_docs import ipc_definition_documents, render_ipc_definition
from coretech.data.cpt.patents import PatentRenderer, truncate_text
from coretech.data.cpt.report import CptBuildReport, MixReport, SourceReport, human_tokens
from coretech.data.cpt.settings import (
    BUILD_FORMAT,
    DATASET_NAMES,
    LABELS,
    SOURCES,
    CptCorpusConfig,
    GeneralSourceConfig,
    IpcSourceConfig,
    PatentSourceConfig,
    SourceName,
    load_cpt_config,
)
from coretech.data.cpt.sources import (
    RenderedDocument,
    Unusable,
    iter_corpus_records,
    render_general,
    render_ipc_description,
)
from coretech.data.cpt.workers import tokenizer_json

__all__ = [
    "BUILD_FORMAT",
    "DATASET_NAMES",
    "LABELS",
    "SOURCES",
    "CptBuildReport",
    "CptCorpusConfig",
    "GeneralSourceConfig",
    "IpcSourceConfig",
    "MixReport",
    "PatentRenderer",
    "PatentSourceConfig",
    "RenderedDocument",
    "SourceName",
    "SourceReport",
    "Unusable",
    "_Build",
    "available_cores",
    "build_cpt_corpus",
    "human_tokens",
    "ipc_definition_documents",
    "iter_corpus_records",
    "load_cpt_config",
    "render_general",
    "render_ipc_definition",
    "render_ipc_description",
    "tokenizer_json",
    "truncate_text",
]
