"""NEAR Select service: embed a candidate pool, find each query's nearest candidates.

The folders are the layers, each importing only the ones listed before it::

    near_schema (client/)   the wire contract both sides share (pydantic only)
    core/      records -> texts -> vectors -> search -> selection; settings and errors
    stores/    the embedding caches (disk, Redis) and the run ledger
    server/    the FastAPI app: state, the SelectHandler behind /select, batching, middleware, routes
    cli/       ``near-select offline`` and ``near-select serve``

The offline CLI and the HTTP service call the same :class:`~near_service.core.pool.Pool`, so online
and offline answers cannot drift apart.
"""

__version__ = "0.1.0"
