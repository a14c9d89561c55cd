"""Embeddings for downstream patent tasks.

views (text views of structured patents) -> extract (poolings, batching, Matryoshka, atomic
output) -> tasks (retrieval, classification, clustering, similarity) with bm25 fusion;
train holds the sentence-transformers fine-tuning recipes; cli wires ``patentgpt embed``.
"""
