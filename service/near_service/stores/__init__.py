"""Persistence: the embedding caches (SQLite on disk, Redis) and the run ledger (Redis).

Stores implement the small protocols the core defines (:class:`~near_service.core.embedder.EmbeddingStore`)
and import only ``core``.
"""
