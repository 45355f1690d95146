"""NEAR Select service: embed a candidate pool, find each query's nearest candidates.

The package is the server side of NEAR Select. Its pure core (records, embedder, cache,
index, selection) is shared by the offline CLI (``near-select offline``) and the HTTP service
(``near-select serve``), so online and offline answers cannot drift apart.
"""

__version__ = "0.1.0"
