"""NEAR Select as a DataFlex selector (``near_service``), and a launcher that registers it everywhere.

A DataFlex run switches to the service by two lines of its train YAML (``component_name:
near_service`` and a ``components_cfg_file`` with a ``near_service`` entry, see
``examples/dataflex/``), started with this module instead of ``dataflex-cli``::

    python -m near_client.dataflex train cfg.yaml [key=value ...]    # same arguments as dataflex-cli train

The launcher registers ``near_service`` in this process and in every torchrun worker (it points
DataFlex's torchrun script at ``near_client/_dataflex_worker.py``, which registers it and then runs
DataFlex's own ``dataflex.launcher.launch``), then runs DataFlex's own ``dataflex.cli.main``.
Importing this module needs only the client; DataFlex (``pip install dataflex==1.1.0``, in its own
venv: ``make dataflex-venv``) is imported by :func:`register`.

What the selector does at each update (``select(model, step_id, num_samples, ...)``):

1. The first time, on the main process: decode DataFlex's tokenized train ``dataset`` with the run's
   tokenizer (prompt = the tokens labelled -100, response = the rest), render each row with
   :func:`near_schema.templates.render_records` and register the texts as pool
   ``dataflex-<fingerprint>`` (``PUT /pools``; a second run with the same data registers nothing).
   With ``pool:`` given, the service's pool must have the same rows and fingerprint instead.
2. On the main process: a round the ledger already holds (``GET /runs/{run_id}/rounds/{round}``) is
   replayed as stored, without computing its queries (``highest_loss`` would differ after a resume);
   a new round is ``/select`` with ``budget = num_samples``, ``run_id`` and ``round``. A short answer
   is asked again with a larger ``max_k`` (doubled, up to the pool size and the service's
   ``NEAR_MAX_K_LIMIT``).
3. The result is broadcast to every rank (``torch.distributed.broadcast_object_list``), logged, and
   appended to ``<cache_dir>/<run_id>/rounds.rank<N>.jsonl``.

The default ``run_id`` (the launcher computes it): ``<basename of output_dir>-<12 hex digits>``, the
digits a SHA-256 of the absolute ``output_dir``, the train config (YAML + overrides, less
``RESUME_KEYS``), the component's params and DataFlex's torchrun settings (``FORCE_TORCHRUN``,
``NNODES``, ``NPROC_PER_NODE``); so resuming with ``resume_from_checkpoint=...`` keeps it, and any
other change of config or of the number of processes starts a new run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from near_schema import fingerprint
from near_schema.templates import render_records

from .client import NearClient, retryable
from .errors import APIError, BadRequestError, NearClientError, NotFoundError, PoolMismatchError

__all__ = ["INSTALL_HINT", "RESUME_KEYS", "RUN_ENV", "main", "register", "rows_to_texts", "run_settings"]

log = logging.getLogger("near_client.dataflex")
INSTALL_HINT = (
    "pip install 'dataflex==1.1.0' (in its own venv: it pins its own torch/transformers; "
    "from a near-select checkout: make dataflex-venv, then use .venv-dataflex/bin/python)"
)
#: The launcher hands the run's id and schedule to every process (torchrun workers included) in it.
RUN_ENV = "NEAR_DATAFLEX_RUN"
#: Config keys left out of the default run_id's hash: changing them does not change the selections.
RESUME_KEYS = ("resume_from_checkpoint", "overwrite_output_dir", "overwrite_cache")
WORKER = Path(__file__).with_name("_dataflex_worker.py")
_CLASS: type | None = None


def rows_to_texts(dataset: Any, tokenizer: Any, template: str = "default") -> list[str]:
    """The texts of a tokenized dataset's rows, in order: prompt (labels -100) and response, rendered."""
    ids_col = dataset["input_ids"]
    labels_col = dataset["labels"] if "labels" in getattr(dataset, "column_names", dataset[0]) else None
    records: list[dict[str, str]] = []
    for i, ids in enumerate(ids_col):
        ids = list(ids)
        if labels_col is None:
            records.append({"text": tokenizer.decode(ids, skip_special_tokens=True).strip()})
            continue
        labels = list(labels_col[i])
        prompt = [t for t, lab in zip(ids, labels, strict=False) if lab == -100]
        response = [t for t, lab in zip(ids, labels, strict=False) if lab != -100]
        records.append(
            {
                "prompt": tokenizer.decode(prompt, skip_special_tokens=True).strip(),
                "response": tokenizer.decode(response, skip_special_tokens=True).strip(),
            }
        )
    return render_records(records, template, source="the DataFlex dataset")


def _load_query_file(path: str, template: str) -> list[str]:
    p = Path(path)
    if p.suffix == ".txt":
        texts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raw = p.read_text(encoding="utf-8")
        records = json.loads(raw) if p.suffix == ".json" else [json.loads(ln) for ln in raw.splitlines() if ln.strip()]
        texts = render_records(records, template, source=str(p))
    if not texts:
        raise ValueError(f"near_service: the queries file {p} holds no texts")
    return texts


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


class _NearService:
    """The selector's logic; :func:`register` mixes it with DataFlex's ``Selector``."""

    def __init__(
        self,
        dataset: Any,
        accelerator: Any,
        data_collator: Any,
        cache_dir: str,
        eval_dataset: Any = None,
        service_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        pool: str | None = None,
        strategy: str = "density",
        max_k: int = 200,
        queries: str = "eval",
        n_queries: int = 16,
        run_id: str | None = None,
        exclude_previous: bool = False,
        timeout: float = 600.0,
        strict: bool = False,
        template: str = "default",
    ) -> None:
        super().__init__(dataset, accelerator, data_collator, cache_dir)  # type: ignore[call-arg]
        self.dataset, self.accelerator, self.data_collator = dataset, accelerator, data_collator
        self.cache_dir, self.eval_dataset = cache_dir, eval_dataset
        if max_k < 1 or n_queries < 1 or timeout <= 0:
            raise ValueError("near_service: need max_k >= 1, n_queries >= 1, timeout > 0")
        if queries in ("eval", "highest_loss"):
            if eval_dataset is None:
                raise ValueError(
                    f"near_service: queries: {queries} needs DataFlex's eval dataset: set eval_dataset "
                    "(or val_size) in the train YAML, or give queries: <file of texts>"
                )
        elif not Path(queries).is_file():
            raise ValueError(
                f"near_service: queries must be eval, highest_loss or a file of texts; {queries!r} is none"
            )
        self.queries, self.n_queries, self.template = queries, n_queries, template
        self.pool_name, self.strategy, self.max_k = pool, strategy, max_k
        self.exclude_previous, self.timeout, self.strict = exclude_previous, timeout, strict
        run = json.loads(os.environ.get(RUN_ENV) or "{}")
        self.schedule = (
            int(run.get("warmup_step", 0)),
            int(run.get("update_step", 0)),
            int(run.get("update_times", 1)),
        )
        if run_id in ("", "none"):
            self.run_id: str | None = None  # no ledger (a service without Redis)
        else:
            self.run_id = run_id or run.get("run_id") or f"dataflex-{_digest([str(Path(cache_dir).resolve()), pool])}"
        self.client = NearClient(service_url, api_key=api_key or os.environ.get("NEAR_API_KEY"), timeout=timeout)
        self._texts: list[str] | None = None
        self._name: str | None = None  # the pool searched, once checked
        self._fp: str | None = None  # its fingerprint
        self._put = False
        self._pool_rows = 0
        self._max_k_limit: int | None = None  # the service's NEAR_MAX_K_LIMIT, read from /info when needed
        self._last: list[int] | None = None
        self._stage, self._last_update = 0, 0
        self._hl: Any = None
        tokenizer = getattr(data_collator, "tokenizer", None)
        if self._main and tokenizer is not None and pool is None:
            try:  # register early, so that the service embeds the pool while the warmup steps train
                self._register(tokenizer, wait=False)
            except NearClientError as exc:
                log.warning("near_service: registering the pool failed (%s); retried at the first update", exc)

    @property
    def _main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    # --- the pool ---------------------------------------------------------------------------
    def _register(self, tokenizer: Any, wait: bool) -> None:
        if self._texts is None:
            self._texts = rows_to_texts(self.dataset, tokenizer, self.template)
        fp = fingerprint(self._texts)
        name = self.pool_name or f"dataflex-{fp}"
        if self.pool_name is None and not self._put:
            status = self.client.put_pool(name, texts=self._texts)
            self._put = True
            log.info("near_service: pool %s (%d rows) is %s", name, status.rows, status.state)
        if not wait:
            return
        status = self.client.wait_pool(name, timeout=self.timeout)
        if status.rows != len(self._texts) or status.fingerprint != fp:
            raise PoolMismatchError(
                f"near_service: the service's pool {name!r} is not this run's train dataset: "
                f"it holds {status.rows} rows with fingerprint {status.fingerprint}, the dataset has "
                f"{len(self._texts)} rows with fingerprint {fp} (rendered with template {self.template!r})",
                expected=(len(self._texts), fp),
                actual=(status.rows, status.fingerprint),
            )
        self._name, self._fp, self._pool_rows = name, fp, status.rows

    # --- queries ----------------------------------------------------------------------------
    def _query_texts(self, model: Any, tokenizer: Any) -> list[str]:
        if self.queries == "eval":
            return rows_to_texts(self.eval_dataset, tokenizer, self.template)
        if self.queries == "highest_loss":
            if self._hl is None:
                from .queries import HighestLossQueries

                features = [
                    {"input_ids": list(r["input_ids"]), "labels": list(r.get("labels", r["input_ids"]))}
                    for r in self.eval_dataset
                ]
                texts = rows_to_texts(self.eval_dataset, tokenizer, self.template)
                self._hl = HighestLossQueries(texts, self.n_queries, features=features)
            return list(self._hl(self.accelerator.unwrap_model(model)))
        return _load_query_file(self.queries, self.template)

    # --- one update -------------------------------------------------------------------------
    def _round(self, step_id: int, current: int, update_times: int | None = None) -> int:
        """The round (update number over the run) of DataFlex's update ``current`` (1-based) at ``step_id``.

        ``update_times``: the updates per stage DataFlex passes to ``select``; used where the launcher's
        schedule (:data:`RUN_ENV`) is absent."""
        warmup, every, times = self.schedule
        if every > 0 and times > 0:  # the launcher told us the schedule: stages repeat every warmup + every * times
            return (step_id // (warmup + every * times)) * times + current - 1
        if update_times is not None and update_times > 0:
            times = update_times
        if current <= self._last_update:  # a new stage (schedule unknown: counted in this process)
            self._stage += 1
        self._last_update = current
        return self._stage * max(times, 1) + current - 1

    def _stored(self, budget: int, round_: int) -> tuple[list[int], int] | None:
        """The ledger's selection for ``round_`` (and its max_k), or None when the round is new.

        A resumed run replays what it trained on, whatever its queries would be now; a stored round
        that answers another question (budget, strategy, exclusion or pool) stops the run."""
        if self.run_id is None:
            return None
        try:
            stored = self.client.run_round(self.run_id, round_)
        except NotFoundError:  # no such run or round (or, for a new run, no default pool to look it up in)
            return None
        if (stored.pool.name, stored.pool.fingerprint) != (self._name, self._fp):
            raise PoolMismatchError(
                f"near_service: run {self.run_id!r} round {round_} is stored for pool {stored.pool.name!r} "
                f"(fingerprint {stored.pool.fingerprint}), not this run's pool {self._name!r} (fingerprint "
                f"{self._fp}): its indices are not into this train set; use a new run_id",
                expected=(self._name, self._fp),
                actual=(stored.pool.name, stored.pool.fingerprint),
            )
        asked = {"budget": budget, "strategy": self.strategy, "exclude_previous": self.exclude_previous}
        held = {"budget": stored.budget, "strategy": stored.strategy, "exclude_previous": stored.exclude_previous}
        selected = list(stored.selected or [])
        if held != asked or len(selected) != budget or len(set(selected)) != budget:
            diffs = "; ".join(f"{k}: stored {held[k]!r}, asked {v!r}" for k, v in asked.items() if held[k] != v)
            raise ValueError(
                f"near_service: run {self.run_id!r} round {round_} is stored with other parameters "
                f"({diffs or f'{len(selected)} indices selected'}): it cannot be replayed; "
                "use a new run_id (or the config the run started with)"
            )
        return selected, stored.max_k

    def _limit(self) -> int:
        """The largest max_k worth asking: the pool's rows, and the service's NEAR_MAX_K_LIMIT where it says."""
        if self._max_k_limit is None:
            self._max_k_limit = self.client.info().max_k_limit or 0
        return min(self._pool_rows, self._max_k_limit) if self._max_k_limit else self._pool_rows

    def _ask(self, queries: list[str], budget: int, round_: int) -> tuple[list[int], int, str]:
        k = min(self.max_k, self._pool_rows)
        while True:
            try:
                answer = self.client.select(
                    queries,
                    k,
                    budget=budget,
                    strategy=self.strategy,  # type: ignore[arg-type]
                    run_id=self.run_id,
                    round=round_ if self.run_id is not None else None,
                    exclude_previous=self.exclude_previous,
                    pool=self._name,
                )
            except BadRequestError as exc:
                if exc.code != "budget_too_large":
                    raise
                cap = self._limit()
                if k >= cap:
                    bound = (
                        f"the service's limit NEAR_MAX_K_LIMIT={self._max_k_limit}"
                        if cap < self._pool_rows
                        else f"the pool's {self._pool_rows} rows"
                    )
                    raise ValueError(
                        f"near_service: round {round_} cannot select {budget} distinct rows: even max_k {k} "
                        f"({bound}) gives too few candidates ({exc.message}). Raise NEAR_MAX_K_LIMIT on the "
                        "service, give more queries (n_queries, or a larger eval set), or train on fewer "
                        "samples per update"
                    ) from exc
                k = min(cap, 2 * k)
                log.info("near_service: %s; asking again with max_k %d", exc.message, k)
                continue
            selected = list(answer.selected or [])
            if len(selected) != budget or len(set(selected)) != budget:
                raise NearClientError(f"near_service: the service answered {len(selected)} indices for budget {budget}")
            return selected, k, answer.source

    def _compute(self, model: Any, step_id: int, num_samples: int, kwargs: dict[str, Any]) -> list[int]:
        tokenizer = kwargs.get("tokenizer") or getattr(self.data_collator, "tokenizer", None)
        if tokenizer is None:
            raise ValueError("near_service: DataFlex passed no tokenizer to select(); cannot decode the dataset")
        if num_samples > len(self.dataset):
            raise ValueError(f"near_service: budget {num_samples} is more than the {len(self.dataset)} training rows")
        round_ = self._round(step_id, int(kwargs.get("current_update_times", 1)), _int(kwargs.get("update_times")))
        queries: list[str] | None = None
        try:
            if self._pool_rows == 0:
                self._register(tokenizer, wait=True)
            stored = self._stored(num_samples, round_)
            if stored is not None:  # replayed: its queries are not computed (highest_loss costs a forward pass)
                (selected, k), source = stored, "stored"
            else:
                queries = self._query_texts(model, tokenizer)
                selected, k, source = self._ask(queries, num_samples, round_)
        except (NearClientError, OSError) as exc:
            fatal = isinstance(exc, (PoolMismatchError, OSError)) or (isinstance(exc, APIError) and not retryable(exc))
            if self.strict or fatal:
                raise
            # not the base class's warmup(): it broadcasts, and only this process is here
            fallback = np.random.default_rng(round_).permutation(len(self.dataset))[:num_samples].tolist()
            selected = self._last or fallback
            log.warning("near_service: round %d failed (%s); training on the previous selection", round_, exc)
            return selected
        self._log_round(
            0,
            {
                "round": round_,
                "step": step_id,
                "pool": self._name,
                "max_k": k,
                "budget": num_samples,
                "strategy": self.strategy,
                "exclude_previous": self.exclude_previous,
                "source": source,
                "queries": queries,
                "selected": selected,
            },
        )
        return selected

    def _log_round(self, rank: int, record: dict[str, Any]) -> None:
        sel = record["selected"]
        folder = Path(self.cache_dir) / (self.run_id or "no-ledger").replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"rounds.rank{rank}.jsonl", "a", encoding="utf-8") as f:  # before the line that says so
            f.write(json.dumps({"run_id": self.run_id, **record}) + "\n")
        print(
            f"[near_service] rank {rank} round {record['round']} step {record['step']}: {len(sel)} indices "
            f"({len(set(sel))} distinct, digest {_digest(sel)}) run_id={self.run_id}"
            + (f" source={record['source']} max_k={record['max_k']}" if "source" in record else ""),
            flush=True,
        )

    def select(self, model: Any, step_id: int, num_samples: int, **kwargs: Any) -> list[int]:
        import torch.distributed as dist

        result: list[Any] = [None]
        if self._main:
            try:
                result = [("ok", self._compute(model, step_id, num_samples, kwargs))]
            except Exception as exc:  # every rank must leave the broadcast, then all raise
                result = [("error", f"{type(exc).__name__}: {exc}")]
                if not (dist.is_available() and dist.is_initialized()):
                    raise
        if dist.is_available() and dist.is_initialized():
            dist.broadcast_object_list(result, src=0)
        status, payload = result[0]
        if status == "error":
            raise RuntimeError(f"near_service selection failed on the main process: {payload}")
        self._last = list(payload)
        if not self._main:
            rank = dist.get_rank() if dist.is_initialized() else 0
            round_ = self._round(step_id, int(kwargs.get("current_update_times", 1)), _int(kwargs.get("update_times")))
            self._log_round(rank, {"round": round_, "step": step_id, "selected": self._last})
        return self._last


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def register() -> type:
    """Register ``near_service`` in DataFlex's selector registry (once per process); return the class."""
    global _CLASS
    try:
        from dataflex.core.registry import REGISTRY, register_selector
        from dataflex.train.selector.base_selector import Selector
    except ImportError as exc:
        raise ImportError(f"near_service needs DataFlex, which is not installed here ({exc}): {INSTALL_HINT}") from exc
    if _CLASS is None:

        class NearServiceSelector(_NearService, Selector):  # type: ignore[misc, valid-type]
            """DataFlex selector ``near_service``: see :mod:`near_client.dataflex`."""

        _CLASS = NearServiceSelector
    try:
        REGISTRY.get("selector", "near_service")
    except KeyError:
        register_selector("near_service")(_CLASS)
    return _CLASS


def run_settings(argv: Sequence[str]) -> dict[str, Any]:
    """The run id and schedule of ``dataflex-cli train`` arguments (what :data:`RUN_ENV` carries).

    The config is read as DataFlex reads it (OmegaConf: the YAML, then ``key=value`` overrides)."""
    cfg: dict[str, Any] = {}
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        from omegaconf import OmegaConf

        merged = OmegaConf.merge(OmegaConf.load(Path(argv[0]).absolute()), OmegaConf.from_cli(list(argv[1:])))
        cfg = dict(OmegaConf.to_container(merged))  # type: ignore[arg-type]
    return _settings_of(cfg)


def _settings_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_settings` of a train config already read."""
    out_dir = str(Path(str(cfg.get("output_dir", "."))).resolve())
    component: Any = None
    comp_file = cfg.get("components_cfg_file")
    if comp_file and Path(comp_file).is_file():
        import yaml

        root = yaml.safe_load(Path(comp_file).read_text(encoding="utf-8")) or {}
        component = (root.get("selectors") or {}).get(cfg.get("component_name"))
    kept = {k: v for k, v in cfg.items() if k not in RESUME_KEYS}
    # how many processes train (DataFlex's torchrun settings): the budget per update depends on it
    processes = {k: os.environ.get(k) for k in ("FORCE_TORCHRUN", "NNODES", "NPROC_PER_NODE")}
    return {
        "run_id": f"{Path(out_dir).name or 'run'}-{_digest([out_dir, kept, component, processes])}",
        "warmup_step": int(cfg.get("warmup_step", 0)),
        "update_step": int(cfg.get("update_step", 0)),
        "update_times": int(cfg.get("update_times", 1)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m near_client.dataflex train cfg.yaml [key=value ...]``: DataFlex's CLI, with ``near_service``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[1] if __doc__ else "", "\nUsage: python -m near_client.dataflex train cfg.yaml")
        return 0 if args else 2
    register()
    import dataflex.cli
    import dataflex.launcher

    if args[0] == "train" and RUN_ENV not in os.environ:
        os.environ[RUN_ENV] = json.dumps(run_settings(args[1:]))
    # DataFlex runs torchrun on dataflex.launcher.__file__: point it at our worker (register, then launch),
    # and let torchrun be found next to this interpreter, like dataflex-cli inside its venv.
    dataflex.launcher.__file__ = str(WORKER)
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    sys.argv = ["dataflex-cli", *args]
    dataflex.cli.main()
    return 0


if __name__ == "__main__":
    from near_client.dataflex import main as _main  # one module instance holds the class, run as -m or imported

    try:
        sys.exit(_main())
    except (ImportError, ValueError, NearClientError) as exc:
        sys.exit(f"error: {exc}")
