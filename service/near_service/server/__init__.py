"""The HTTP service: the app factory and lifespan (:mod:`app`), the resources it holds
(:mod:`state`), the serving object behind ``/select`` (:mod:`select_handler`), micro-batching
(:mod:`batcher`), middleware and metrics, and the thin routes in :mod:`api`.
"""
