"""The core: pure computation that both the offline CLI and the service call.

Records to texts (:mod:`records`), texts to vectors (:mod:`modelspec`, :mod:`embedder`), exact and
approximate search (:mod:`index`), neighbour matrices to training subsets (:mod:`selection`), and the
one search path over a candidate pool (:mod:`pool`). Settings and the error tree live here too, since
every layer above uses them. Nothing in ``core`` imports ``stores``, ``server`` or ``cli``.
"""
