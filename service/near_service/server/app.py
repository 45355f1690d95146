"""The selection service: ``create_app(settings)`` builds the FastAPI app.

    uvicorn near_service.app:create_app --factory      # settings from NEAR_* variables
    near-select serve --candidates pool.jsonl           # the same, with flags

Settings are checked when the app is created (a missing pool file fails before the model loads).
The lifespan builds the engine, which loads the model and opens the startup pool (``--candidates``,
the pool named ``default``) and the pools registered earlier in its threads (``/ready`` is 503 with
progress until the default pool is ready), starts the query micro-batcher and a Redis health check,
and shuts all of it down at exit.

>>> app = create_app(load_settings(candidates=["pool.jsonl"]))     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from near_service import __version__
from near_service.core.embedder import Embedder
from near_service.core.settings import Settings, load_settings
from near_service.server.api.docs import install_docs
from near_service.server.api.errors import install_error_handlers
from near_service.server.api.main import routers
from near_service.server.metrics import Metrics, MetricsMiddleware
from near_service.server.middleware import AuthMiddleware, BodyLimitMiddleware
from near_service.server.state import ServiceState, check_settings

log = logging.getLogger(__name__)

REDIS_CHECK_S = 1.0
#: Paths whose successful answers stay out of uvicorn's access log (health checks every few seconds).
QUIET_PATHS = frozenset({"/health", "/ready"})


class QuietHealthChecks(logging.Filter):
    """Drops uvicorn access-log lines of successful ``/health`` and ``/ready`` checks."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 5:  # uvicorn: (client, method, path, http version, status)
            path, status = str(args[2]).split("?", 1)[0], args[4]
            return not (path in QUIET_PATHS and status in (200, 503))
        return True


def quiet_health_checks() -> None:
    """Install :class:`QuietHealthChecks` on ``uvicorn.access`` (once)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, QuietHealthChecks) for f in access.filters):
        access.addFilter(QuietHealthChecks())


SHUTDOWN_FLUSH_S = 8.0  # one batch and a cache flush; within compose's 10 s stop grace period


async def _watch_redis(state: ServiceState) -> None:
    """Ping Redis every second so /ready and /metrics say when it goes and comes back.

    The pings run off the model thread and report to the shared breaker, so while Redis is hung
    they, not requests, pay its timeout, and the first answered ping closes the breaker again."""
    assert state.redis is not None
    while True:
        await asyncio.to_thread(state.redis.cache.check)
        state.update_redis_gauge()
        await asyncio.sleep(REDIS_CHECK_S)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = await asyncio.to_thread(ServiceState.build, app.state.settings, app.state.metrics, app.state.embedder)
    app.state.near = state
    state.batcher.start()
    await asyncio.to_thread(state.start)  # reads the startup pool (a bad file fails here); threads do the rest
    tasks: list[asyncio.Task[None]] = []
    if state.redis is not None:
        tasks.append(asyncio.create_task(_watch_redis(state), name="near-watch-redis"))
    log.info("serving; %d pool(s) opening in the background", len(state.engine.pools))
    try:
        yield
    finally:
        await state.batcher.stop()
        for task in tasks:
            task.cancel()
        # SIGTERM while embedding a pool: the embedder stores what it computed and stops
        await asyncio.to_thread(state.close)


def create_app(settings: Settings | None = None, embedder: Embedder | None = None) -> FastAPI:
    """The service app for ``settings`` (default: read from ``NEAR_*``); raises ConfigError if unusable.

    ``embedder`` replaces the model the settings name (tests pass a fast fake one).
    """
    settings = settings if settings is not None else load_settings()
    check_settings(settings)
    if not logging.getLogger().handlers:  # plain `uvicorn ...`: uvicorn only configures its own loggers
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("near_service").setLevel(settings.log_level.upper())
    quiet_health_checks()
    app = FastAPI(
        title="NEAR Select",
        version=__version__,
        lifespan=lifespan,
        description="Pick the training data nearest to your target task while a model fine-tunes.",
        docs_url=None,  # served from local assets by install_docs
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.embedder = embedder
    for router in routers:
        app.include_router(router)
    install_docs(app)
    install_error_handlers(app)
    # Starlette runs the last added outermost: metrics see every answer; auth runs before any of the
    # body is read (and never reads it); the body limit and timeout run before the app parses it.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.body_limit,
        timeout_s=settings.body_timeout,
        pool_max_bytes=settings.max_pool_body_bytes,
    )
    if settings.api_key is not None or settings.admin_key is not None:
        app.add_middleware(
            AuthMiddleware,
            api_key=settings.api_key.get_secret_value() if settings.api_key else None,
            admin_key=settings.admin_key.get_secret_value() if settings.admin_key else None,
        )
    app.state.metrics = Metrics()
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
