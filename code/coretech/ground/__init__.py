"""Grounded answers without a language model: BM25 retrieval of IPC codes (a baseline and RAG candidates)."""
