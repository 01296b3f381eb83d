"""Grounded answers without a language model: BM25 retrieval of IPC codes (a baseline and RAG candidates).

The naming of the retrieval-augmented datasets lives here, free of the retrieval libraries, so the pipeline
can plan and check them without importing those.
"""

RAG_SUFFIX = "_rag"
SFT_PREFIX = "coretech_sft_"
RAG_DIR = "sft/rag"  # inside the dataset folder: the variants, rag.md and rag.json


def rag_variant(dataset: str) -> str:
    """The name a dataset's retrieval-augmented variant is registered under (``coretech prepare rag``)."""
    return f"{dataset}{RAG_SUFFIX}"


def has_rag_variant(dataset: str) -> bool:
    """Whether ``coretech prepare rag`` writes a variant of this dataset: every prepared SFT dataset."""
    return dataset.startswith(SFT_PREFIX) and not dataset.endswith(RAG_SUFFIX)
