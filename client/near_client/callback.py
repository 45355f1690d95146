"""Dynamic NEAR selection inside a ``transformers.Trainer`` (DataFlex's schedule, served online).

Usage (needs a running service and a Trainer; see ``examples/train_hf_trainer.py``)::

    from near_client import NearClient, NearSelectionCallback

    near = NearSelectionCallback(NearClient("http://near:8000"), queries=target_texts,
                                 warmup_step=100, update_step=100, update_times=5, max_k=200)
    trainer = Trainer(model=model, args=args, train_dataset=pool_dataset, data_collator=collator)
    near.attach(trainer)        # adds the callback and installs its sampler
    trainer.train()
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from typing import Any

from near_schema import PoolInfo, SelectResponse, Strategy, fingerprint
from near_schema.templates import render_records

from .client import NearClient, retryable
from .errors import APIError, ConflictError, InvalidResponseError, NearClientError, PoolMismatchError, ServerError

try:
    import torch
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("NearSelectionCallback needs transformers and torch: pip install 'near-select[train]'") from exc

from .queries import QueryFn
from .sampler import SelectionSampler

__all__ = ["REPORT_FILE", "STATE_FILE", "NearSelectionCallback"]

log = logging.getLogger("near_client.callback")
STATE_FILE = "near_selection.json"
REPORT_FILE = "near_report.html"
_SOURCE_FIELDS = ("source", "dataset", "task")


class NearSelectionCallback(TrainerCallback):
    """Train on the pool's samples nearest to a query set, re-selected while the model trains.

    The schedule is DataFlex's: before ``warmup_step`` optimizer steps the Trainer sees the whole
    pool in random order; at ``warmup_step`` and every ``update_step`` steps after it, for
    ``update_times`` updates, the main process calls ``/select`` with the current queries and
    ``budget = world_size * per_device_train_batch_size * gradient_accumulation_steps * update_step``
    (exactly the samples the next ``update_step`` steps consume), and from then on the Trainer
    trains only on the selected samples, each once per pass, shuffled. After the last update it
    keeps training on the last selection.

    Usage (a plain ``transformers.Trainer``; ``train_dataset`` is the service's pool, in order)::

        near = NearSelectionCallback(NearClient("http://near:8000"), queries=target_texts,
                                     warmup_step=100, update_step=100, update_times=5, max_k=200)
        trainer = Trainer(model=model, args=args, train_dataset=pool, data_collator=collator)
        near.attach(trainer)   # registers the callback and installs its SelectionSampler
        trainer.train()        # or trainer.train(resume_from_checkpoint=True)

    Args:
        client: a :class:`~near_client.NearClient` for the service holding the pool.
        queries: fixed texts, or a callable ``(model, state) -> list[str]`` such as
            :class:`~near_client.HighestLossQueries`.
        warmup_step, update_step, update_times, max_k: DataFlex's parameters (``max_K``).
        budget: override the computed budget (samples per update).
        strategy, exclude_previous: passed to ``/select``.
        run_id: the ledger's run id (default: ``args.run_name``, else ``args.output_dir``). With
            ``run_id`` and ``round`` the service returns a stored round unchanged, so a run resumed
            from a checkpoint trains on identical selections.
        pool: the service's pool to select from (default: its pool named ``default``).
        register: register the Trainer's own ``train_dataset`` as the pool first (``PUT /pools``:
            its rows rendered with ``template`` by :func:`near_schema.templates.render_records`, the
            function the service renders files with, or ``pool_texts`` when given), wait for it,
            and from then on every index received is an index into exactly that dataset. A second
            run with the same data registers nothing new (same fingerprint). Pool name: ``pool``,
            else ``train-<fingerprint>``.
        template: how ``register`` renders dataset rows (see ``near-select offline --template``).
        pool_texts: the pool's rendered texts, in order; when given, the service's pool
            fingerprint must match them (otherwise only the size is checked).
        strict: raise when the service fails instead of keeping the current selection.
        report: at the end of training, write the run's report (``GET /runs/{run_id}/report``, one
            self-contained HTML page) to ``<output_dir>/near_report.html``. Every round's log line
            gives its overlap with the earlier rounds and its top 3 sources (the rows' ``source``,
            ``dataset`` or ``task`` field, where the dataset has one).
        use_ledger: send ``run_id``/``round`` (turned off, with a warning, when the service has no Redis).

    Failures: a service that is down, restarting, overloaded or answering 5xx never stops training
    (unless ``strict``): the current selection stays, a warning is logged, and the update is retried
    at the next step. Errors that retrying cannot fix raise at once: a pool that is not the training
    dataset (:class:`~near_client.PoolMismatchError`), and 400/401/404/409/413/422 answers.

    Staleness: batches already drawn from the sampler when an update lands still come from the
    previous selection: at most ``1 + dataloader_num_workers * prefetch_factor`` batches per process
    (see :mod:`near_client.sampler`). Everything after them comes from the new selection.

    Distributed: only the main process calls the service; the selection is broadcast so every
    process trains on the same selection, each on its shard of the batches.
    """

    def __init__(
        self,
        client: NearClient,
        queries: Sequence[str] | QueryFn,
        *,
        warmup_step: int,
        update_step: int,
        update_times: int,
        max_k: int,
        budget: int | None = None,
        strategy: Strategy = "density",
        exclude_previous: bool = False,
        run_id: str | None = None,
        pool_texts: Sequence[str] | None = None,
        strict: bool = False,
        use_ledger: bool = True,
        pool: str | None = None,
        register: bool = False,
        template: str = "default",
        wait_timeout: float = 3600.0,
        report: bool = False,
    ) -> None:
        if warmup_step < 0 or update_step < 1 or update_times < 0 or max_k < 1:
            raise ValueError("need warmup_step >= 0, update_step >= 1, update_times >= 0, max_k >= 1")
        if not callable(queries) and (isinstance(queries, str) or not list(queries)):
            raise ValueError("queries must be a non-empty list of texts or a callable (model, state) -> texts")
        self.client = client
        self.queries = queries if callable(queries) else list(queries)
        self.warmup_step, self.update_step, self.update_times = warmup_step, update_step, update_times
        self.max_k, self.budget, self.strategy = max_k, budget, strategy
        self.exclude_previous, self.run_id, self.strict, self.use_ledger = exclude_previous, run_id, strict, use_ledger
        self.pool_texts = list(pool_texts) if pool_texts is not None else None
        self.pool_fingerprint = fingerprint(self.pool_texts) if self.pool_texts is not None else None
        self.pool_name, self.register, self.template, self.wait_timeout = pool, register, template, wait_timeout
        self._dataset: Any = None
        self.report = report
        self.next_round = 0
        self.sampler: SelectionSampler | None = None
        self._pool: PoolInfo | None = None  # the service's pool, once checked
        self._sampler_served = False

    # --- installing --------------------------------------------------------------------------
    def attach(self, trainer: Any) -> Any:
        """Register this callback on ``trainer`` and make it train from this callback's sampler."""
        dataset = trainer.train_dataset
        if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
            raise TypeError(
                "NearSelectionCallback needs a map-style train_dataset (with __len__), in the service's pool order"
            )
        if getattr(trainer.args, "train_sampling_strategy", "random") != "random":
            log.warning(
                "train_sampling_strategy=%r is replaced by NEAR selection's sampler",
                trainer.args.train_sampling_strategy,
            )
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        self._dataset = dataset
        args = trainer.args
        seed = args.data_seed if args.data_seed is not None else args.seed

        def _get_train_sampler(train_dataset: Any = None, *_: Any, **__: Any) -> SelectionSampler:
            size = len(train_dataset if train_dataset is not None else trainer.train_dataset)
            if self.sampler is None or self.sampler.size != size:
                self.sampler = SelectionSampler(size, seed=seed)
            self._sampler_served = True
            return self.sampler

        # The one hook Trainer offers for the training sampler (the one TRL overrides too).
        trainer._get_train_sampler = _get_train_sampler
        return trainer

    # --- Trainer events ----------------------------------------------------------------------
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        if self.sampler is None or not self._sampler_served:
            raise RuntimeError(
                "NearSelectionCallback is not attached: call callback.attach(trainer) before trainer.train()"
            )
        self._budget = self.budget or (
            args.world_size * args.per_device_train_batch_size * args.gradient_accumulation_steps * self.update_step
        )
        if self._budget > self.sampler.size:
            raise ValueError(
                f"budget {self._budget} is larger than the training pool ({self.sampler.size}); "
                "lower update_step or the batch size, or pass budget="
            )
        self._run_id = _run_id(self.run_id or args.run_name or os.path.abspath(args.output_dir or "run"))
        if state.global_step > 0:
            self._restore(args, state)
        if self.register and _rank() == 0:
            self._register()  # errors here stop training: without its pool the run cannot select
        # Fail fast on a wrong pool; a service that is not up yet is retried at the first update.
        self._on_main(self._check_pool, what="pool check")
        if self.warmup_step == 0 and state.global_step == 0:
            self._update(args, state, model)

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # The Trainer sets the epoch through the DataLoader too; this covers wrappers that do not
        # forward it (e.g. a resumed distributed run). state.epoch is exact at epoch boundaries.
        if self.sampler is not None:
            self.sampler.set_epoch(math.floor(state.epoch + 1e-9) if state.epoch else 0)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        self._update(args, state, model)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        folder = os.path.join(args.output_dir or ".", f"checkpoint-{state.global_step}")
        if args.should_save and os.path.isdir(folder):
            with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as f:
                json.dump(self.state_dict(), f)

    # --- state -------------------------------------------------------------------------------
    @property
    def history(self) -> list[dict[str, Any]]:
        """The updates so far: round, step, stream position ``start`` and ``selected`` indices."""
        if self.sampler is None:
            return []
        return [p.to_json() for p in self.sampler.phases[1:]]

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "run_id": getattr(self, "_run_id", self.run_id),
            "next_round": self.next_round,
            "sampler": None if self.sampler is None else self.sampler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_round = int(state["next_round"])
        if state.get("sampler") and self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])

    def _restore(self, args: TrainingArguments, state: TrainerState) -> None:
        path = os.path.join(args.output_dir or ".", f"checkpoint-{state.global_step}", STATE_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                self.load_state_dict(json.load(f))
            log.info("NEAR selection restored from %s: %d rounds done", path, self.next_round)
            return
        # No saved state (a checkpoint from elsewhere): the ledger replays the latest due round.
        done = self._latest_due_round(state.global_step)
        self.next_round = 0 if done is None else done
        log.warning(
            "no %s next to the checkpoint at step %d; the latest round is fetched again from the service's ledger",
            STATE_FILE,
            state.global_step,
        )

    # --- the update ----------------------------------------------------------------------------
    def _latest_due_round(self, step: int) -> int | None:
        if self.update_times == 0 or step < self.warmup_step:
            return None
        return min(self.update_times - 1, (step - self.warmup_step) // self.update_step)

    def _update(self, args: TrainingArguments, state: TrainerState, model: Any) -> None:
        r = self._latest_due_round(state.global_step)
        if r is None or r < self.next_round:
            return
        assert self.sampler is not None
        payload = self._on_main(lambda: self._select(r, model, state), what=f"round {r}")
        if payload is None:
            return
        start = self.sampler.frontier
        if _world() > 1:  # every process switches at the same stream position
            starts: list[Any] = [None] * _world()
            torch.distributed.all_gather_object(starts, start)
            start = max(starts)
        start = self.sampler.switch(payload, r, start=start, step=state.global_step)
        self.next_round = r + 1
        log.info(
            "NEAR round %d at step %d: %d samples selected, from stream position %d; %s",
            r,
            state.global_step,
            len(payload),
            start,
            self._summary(payload),
        )

    def _summary(self, chosen: Sequence[int]) -> str:
        """Overlap with the earlier rounds and the top 3 sources of a round (the report's numbers)."""
        earlier = [set(h["indices"]) for h in self.history[:-1]]
        seen = set().union(*earlier) if earlier else set()
        picked = set(chosen)
        overlap = len(picked & seen)
        jaccard = overlap / len(picked | seen) if picked | seen else 0.0
        parts = [f"overlap with earlier rounds {overlap} (Jaccard {jaccard:.2f})"]
        sources = _sources(self._dataset, chosen)
        if sources:
            top = sorted(sources.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            parts.append("top sources " + ", ".join(f"{k} {v / len(chosen):.0%}" for k, v in top))
        return "; ".join(parts)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not self.report or _rank() != 0 or not self.history or not self.use_ledger:
            return
        path = os.path.join(args.output_dir or ".", REPORT_FILE)
        try:
            html = self.client.run_report(self._run_id)
        except NearClientError as exc:
            log.warning("could not fetch the run's report from the service (%s); %s not written", exc, path)
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(html)
        log.info("NEAR report of run %s written to %s", self._run_id, path)

    def _select(self, r: int, model: Any, state: TrainerState) -> list[int]:
        queries = list(self.queries(model, state) if callable(self.queries) else self.queries)
        if not queries:
            raise ValueError("the query set is empty")
        if self._pool is None:
            self._check_pool()
        ledger = self.use_ledger

        def ask(rr: int) -> SelectResponse:
            return self.client.select(
                queries,
                self.max_k,
                budget=self._budget,
                strategy=self.strategy,
                run_id=self._run_id if ledger else None,
                round=rr if ledger else None,
                exclude_previous=self.exclude_previous and ledger,
                pool=self.pool_name,
            )

        try:
            answer = ask(r)
        except ConflictError as exc:
            if exc.code != "missing_rounds":
                raise
            # Earlier rounds are not in the ledger (the service was down when they were due, or Redis
            # lost them): store them now, in order, so what exclude_previous leaves out is the same on
            # every rerun. A round already stored answers 409 "conflict" (other queries): it is there.
            log.warning(
                "run %s: rounds before %d are missing from the service's ledger; filling them in", self._run_id, r
            )
            for earlier in range(r):
                try:
                    ask(earlier)
                except ConflictError as fill_exc:
                    if fill_exc.code != "conflict":
                        raise
            answer = ask(r)
        if answer.pool.size != self._pool_size() or (self._pool and answer.pool.fingerprint != self._pool.fingerprint):
            raise PoolMismatchError(
                f"the service's pool changed: now {answer.pool.size} samples, fingerprint "
                f"{answer.pool.fingerprint} (was {self._pool})",
                expected=self._pool,
                actual=answer.pool,
            )
        if answer.selected is None:
            raise InvalidResponseError("/select answered without 'selected' although a budget was sent")
        return list(answer.selected)

    def _pool_size(self) -> int:
        assert self.sampler is not None
        return self.sampler.size

    def _register(self) -> None:
        """Render the Trainer's dataset, register it as the pool and wait until it is searchable."""
        texts = self.pool_texts if self.pool_texts is not None else _render_dataset(self._dataset, self.template)
        fp = fingerprint(texts)
        if self.pool_fingerprint is not None and fp != self.pool_fingerprint:  # pragma: no cover - same texts
            raise PoolMismatchError("pool_texts changed while registering", expected=self.pool_fingerprint, actual=fp)
        self.pool_fingerprint = fp
        self.pool_name = self.pool_name or f"train-{fp}"
        try:
            status = self.client.put_pool(self.pool_name, texts)
        except ConflictError as exc:
            raise PoolMismatchError(
                f"the service's pool {self.pool_name!r} holds other data ({exc.message}); name another pool, or "
                "delete it first",
                expected=fp,
            ) from exc
        log.info("NEAR pool %r: %d rows registered (%s); waiting for it", self.pool_name, status.rows, status.state)
        searchable = self.strategy not in ("density", "importance")
        self.client.wait_pool(self.pool_name, self.wait_timeout, progress=True, searchable=searchable)

    def _check_pool(self) -> None:
        size = self._pool_size()
        if self.pool_name is not None:
            status = self.client.pool(self.pool_name)
            info = self.client.info()
            actual = PoolInfo(size=status.rows, fingerprint=status.fingerprint, model=info.model, name=status.name)
        else:
            info = self.client.info()
            if info.pool is None:
                raise PoolMismatchError(
                    "the service has no default pool: pass pool='name', or register=True to register the "
                    "training dataset",
                    expected=size,
                )
            actual = info.pool
        if actual.size != size:
            raise PoolMismatchError(
                f"the service's pool {actual.name!r} has {actual.size} samples but the training dataset has {size}: "
                "serve the training dataset as the candidate pool, in the same order (or register=True)",
                expected=size,
                actual=actual.size,
            )
        if self.pool_fingerprint is not None and actual.fingerprint != self.pool_fingerprint:
            raise PoolMismatchError(
                f"the service's pool fingerprint {actual.fingerprint} differs from the training texts' "
                f"{self.pool_fingerprint}: same size, different samples or order (or another template)",
                expected=self.pool_fingerprint,
                actual=actual.fingerprint,
            )
        if self.use_ledger and info.redis == "disabled":
            log.warning(
                "the NEAR service runs without Redis, so it keeps no run ledger: a resumed run may "
                "get different selections"
            )
            self.use_ledger = False
        self._pool = actual

    def _on_main(self, fn: Any, what: str) -> Any:
        """Run ``fn`` on the main process, share its result; service failures warn (or raise if strict)."""
        payload: dict[str, Any]
        error: BaseException | None = None
        if _rank() == 0:
            try:
                payload = {"ok": True, "value": fn()}
            except NearClientError as exc:
                error = exc
                payload = {"ok": False, "fatal": self.strict or not _transient(exc), "error": f"{exc!r}"}
            except Exception as exc:  # the query callable, a bad answer: never leave other ranks waiting
                error = exc
                payload = {"ok": False, "fatal": True, "error": f"{exc!r}"}
        else:
            payload = {}
        if _world() > 1:
            box = [payload]
            torch.distributed.broadcast_object_list(box, src=0)
            payload = box[0]
        if payload["ok"]:
            return payload["value"]
        if payload["fatal"]:
            if error is not None:
                raise error
            raise NearClientError(f"NEAR selection failed on the main process: {payload['error']}")
        log.warning(
            "NEAR %s failed: %s; training goes on with the current selection and retries at the next step",
            what,
            payload["error"],
        )
        return None


def _sources(dataset: Any, chosen: Sequence[int]) -> dict[str, int]:
    """How many of ``chosen`` come from each source (the rows' source/dataset/task field); {} if none."""
    if dataset is None or not len(chosen):
        return {}
    try:
        first = dataset[int(chosen[0])]
        field = next((f for f in _SOURCE_FIELDS if isinstance(first, dict) and f in first), None)
        if field is None:
            return {}
        counts: dict[str, int] = {}
        for i in chosen:
            key = str(dataset[int(i)].get(field))
            counts[key] = counts.get(key, 0) + 1
        return counts
    except Exception:  # a dataset that cannot be read row by row here: no sources in the log
        return {}


def _render_dataset(dataset: Any, template: str) -> list[str]:
    """The texts of a map-style dataset's rows, rendered as the service renders pool files."""
    rows = []
    for i in range(len(dataset)):
        row = dataset[i]
        if not isinstance(row, dict):
            raise TypeError(
                f"train_dataset[{i}] is {type(row).__name__}; register=True needs dict rows, or pool_texts="
            )
        rows.append(row)
    try:
        return render_records(rows, template, "train_dataset")
    except ValueError as exc:
        raise ValueError(
            f"register=True cannot render the training dataset ({exc}); keep its text columns (e.g. "
            "question/answer, instruction/output, text, messages) next to input_ids, or pass pool_texts="
        ) from exc


def _transient(exc: NearClientError) -> bool:
    """Failures a later retry can fix: transport errors, 429, 5xx, a garbled answer."""
    if isinstance(exc, PoolMismatchError):
        return False
    return retryable(exc) or isinstance(exc, (ServerError, InvalidResponseError)) or not isinstance(exc, APIError)


def _world() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_world_size())
    return 1


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return 0


def _run_id(raw: str) -> str:
    """A ledger run id from a run name or output dir: [A-Za-z0-9._:@+-], starting alphanumeric, <= 200."""
    clean = re.sub(r"[^A-Za-z0-9._:@+-]+", "-", raw)
    clean = re.sub(r"^[^A-Za-z0-9]+", "", clean) or "run"
    if len(clean) > 200:
        clean = clean[-183:].lstrip("._:@+-") + "-" + hashlib.sha256(raw.encode()).hexdigest()[:16]
    return clean
