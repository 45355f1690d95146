"""The near_service selector's parts that need no DataFlex (they run in .venv): decoding DataFlex's
tokenized rows, bad parameters, the launcher's message where DataFlex is not installed, the default
run id, the round numbers, and, against the real app in process (FakeEmbedder, a real Redis),
replaying stored rounds on resume and the max_k limit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from near_client import NearClient
from near_client.dataflex import INSTALL_HINT, RESUME_KEYS, RUN_ENV, _NearService, _settings_of, rows_to_texts
from tests.conftest import InProcessFactory, InProcessService, RedisServer


class FakeAccelerator:
    """Stands in for accelerate's Accelerator: only ``is_main_process`` is read at construction."""

    def __init__(self, main: bool = False) -> None:
        self.is_main_process = main

    def unwrap_model(self, model: Any) -> Any:
        return model


class _Base:  # stands in for DataFlex's Selector base (its __init__ takes these four)
    def __init__(self, dataset: Any, accelerator: Any, data_collator: Any, cache_dir: str) -> None:
        pass


class Selector(_NearService, _Base):
    pass


def word_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "Human:", "Assistant:", "add", "1", "2", "3", "is"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")


def test_rows_decode_to_prompt_and_response() -> None:
    from datasets import Dataset

    tok = word_tokenizer()
    ids = tok("Human: add 1 2 Assistant: 3")["input_ids"]
    labels = [-100] * 5 + ids[5:]
    ds = Dataset.from_list([{"input_ids": ids, "labels": labels}, {"input_ids": ids[:5], "labels": [-100] * 5}])
    assert rows_to_texts(ds, tok) == ["Human: add 1 2 Assistant:\n3", "Human: add 1 2 Assistant:"]
    no_labels = Dataset.from_list([{"input_ids": ids}])
    assert rows_to_texts(no_labels, tok) == ["Human: add 1 2 Assistant: 3"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"queries": "eval"}, "queries: eval needs DataFlex's eval dataset"),
        ({"queries": "highest_loss"}, "queries: highest_loss needs DataFlex's eval dataset"),
        ({"queries": "no/such/file.txt", "eval_dataset": [1]}, "must be eval, highest_loss or a file of texts"),
        ({"max_k": 0, "eval_dataset": [1]}, "need max_k >= 1"),
    ],
)
def test_bad_parameters_are_clear_errors(tmp_path: Path, params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Selector([], FakeAccelerator(), None, str(tmp_path), **params)


def test_launcher_without_dataflex_says_what_to_install(tmp_path: Path) -> None:
    pytest.importorskip("near_client")
    try:
        import dataflex  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover
        pytest.skip("DataFlex is installed in this venv")
    out = subprocess.run(
        [sys.executable, "-m", "near_client.dataflex", "train", str(tmp_path / "cfg.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 1 and INSTALL_HINT in out.stderr


# --- the default run id ------------------------------------------------------------------------
def test_default_run_id_hashes_output_dir_and_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("FORCE_TORCHRUN", "NNODES", "NPROC_PER_NODE"):
        monkeypatch.delenv(k, raising=False)
    comps = tmp_path / "components.yaml"
    comps.write_text(json.dumps({"selectors": {"near_service": {"params": {"max_k": 4}}}}), encoding="utf-8")
    cfg = {
        "output_dir": str(tmp_path / "out-a"),
        "components_cfg_file": str(comps),
        "component_name": "near_service",
        "learning_rate": 5e-3,
        "warmup_step": 2,
        "update_step": 3,
        "update_times": 3,
    }
    first = _settings_of(cfg)
    assert first == _settings_of(dict(cfg))  # deterministic
    assert first["run_id"].startswith("out-a-") and len(first["run_id"]) == len("out-a-") + 12
    assert (first["warmup_step"], first["update_step"], first["update_times"]) == (2, 3, 3)
    # resuming (and the other RESUME_KEYS) keeps it ...
    assert _settings_of({**cfg, **dict.fromkeys(RESUME_KEYS, "x")})["run_id"] == first["run_id"]
    # ... any other change of config, output dir, component params or process count starts a new run
    changed = [
        _settings_of({**cfg, "learning_rate": 1e-3}),
        _settings_of({**cfg, "output_dir": str(tmp_path / "out-b")}),
    ]
    comps.write_text(json.dumps({"selectors": {"near_service": {"params": {"max_k": 8}}}}), encoding="utf-8")
    changed.append(_settings_of(cfg))
    comps.write_text(json.dumps({"selectors": {"near_service": {"params": {"max_k": 4}}}}), encoding="utf-8")
    assert _settings_of(cfg) == first
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    changed.append(_settings_of(cfg))
    ids = [first["run_id"], *(c["run_id"] for c in changed)]
    assert len(set(ids)) == len(ids), ids


def test_run_settings_reads_the_config_as_dataflex_does(dataflex_python: Path, tmp_path: Path) -> None:
    """run_settings with OmegaConf (a DataFlex dependency, absent from .venv): YAML plus key=value."""
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'out'}\nupdate_times: 3\nlearning_rate: 5.0e-3\n", encoding="utf-8")
    code = (
        "import json, sys; from near_client.dataflex import run_settings; print(json.dumps(run_settings(sys.argv[1:])))"
    )

    def settings(*argv: str) -> dict[str, Any]:
        out = subprocess.run([str(dataflex_python), "-c", code, *argv], capture_output=True, text=True, check=True)
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result

    base = settings(str(cfg))
    assert base["run_id"].startswith("out-") and base["update_times"] == 3
    assert settings(str(cfg), "resume_from_checkpoint=ckpt")["run_id"] == base["run_id"]
    over = settings(str(cfg), "update_times=4")
    assert over["update_times"] == 4 and over["run_id"] != base["run_id"]


# --- the round number ---------------------------------------------------------------------------
def test_round_uses_update_times_from_select_without_the_launcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(RUN_ENV, raising=False)
    sel = Selector([], FakeAccelerator(), None, str(tmp_path), eval_dataset=[1], run_id="none")
    # two stages of 3 updates each (DataFlex counts current_update_times from 1 in each stage)
    assert [sel._round(s, c, 3) for s, c in [(2, 1), (5, 2), (8, 3), (12, 1), (15, 2), (18, 3)]] == [0, 1, 2, 3, 4, 5]
    monkeypatch.setenv(RUN_ENV, json.dumps({"run_id": "r", "warmup_step": 2, "update_step": 3, "update_times": 3}))
    with_env = Selector([], FakeAccelerator(), None, str(tmp_path), eval_dataset=[1])
    assert with_env.run_id == "r" and with_env._round(8, 3, 99) == 2  # the launcher's schedule wins
    assert with_env._round(11 + 8, 3, None) == 5


# --- against the real app in process ------------------------------------------------------------
class ViaTestClient(httpx.BaseTransport):
    """Sends a NearClient's requests to the in-process app (Starlette's TestClient)."""

    def __init__(self, svc: InProcessService) -> None:
        self.svc = svc

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.svc.client.request(
            request.method, request.url.raw_path.decode(), content=request.read(), headers=dict(request.headers)
        )
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)


def train_set(n: int = 24) -> Any:
    """``n`` tokenized rows (prompt labelled -100), every row different, and their tokenizer."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "Human:", "Assistant:", "add", "is", *(str(i) for i in range(12))]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>")),
        pad_token="<pad>",
    )
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    rows = []
    for i in range(n):
        a, b = i % 12, (i * 5 + 1 + i // 12) % 12
        ids = tok(f"Human: add {a} {b} Assistant: {a} {b} is {(a + b) % 12}")["input_ids"]
        rows.append({"input_ids": ids, "labels": [-100] * 5 + ids[5:]})
    return Dataset.from_list(rows), tok


def selector(svc: InProcessService, tmp_path: Path, queries: list[str], **params: Any) -> Any:
    qfile = tmp_path / f"queries-{abs(hash(tuple(queries)))}.txt"
    qfile.write_text("\n".join(queries), encoding="utf-8")
    dataset, _ = train_set()
    sel = Selector(dataset, FakeAccelerator(main=True), None, str(tmp_path / "sel"), queries=str(qfile), **params)
    sel.client = NearClient("http://testserver", transport=ViaTestClient(svc))
    return sel


def test_a_resumed_run_replays_stored_rounds_without_computing_queries(
    inprocess: InProcessFactory, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rounds the ledger holds come back as stored even when this run's queries differ (highest_loss
    after a resume), and their queries are not computed; the next round is new and still leaves out
    what the stored rounds selected (exclude_previous)."""
    monkeypatch.delenv(RUN_ENV, raising=False)
    svc = inprocess(redis_url=redis_server.url)
    _, tok = train_set()
    params = {"run_id": "resume-1", "max_k": 4, "strategy": "max_score", "exclude_previous": True}
    first = selector(svc, tmp_path, ["add 1 2", "add 3 4"], **params)
    kw = {"tokenizer": tok, "update_times": 3}
    done = [first.select(None, step, 4, current_update_times=c, **kw) for step, c in [(2, 1), (5, 2)]]

    resumed = selector(svc, tmp_path, ["add 7 7 is 2", "add 9 0"], **params)  # other queries now
    computed: list[int] = []
    real = resumed._query_texts

    def counting(model: Any, tokenizer: Any) -> list[str]:
        computed.append(1)
        texts: list[str] = real(model, tokenizer)
        return texts

    resumed._query_texts = counting
    again = [resumed.select(None, step, 4, current_update_times=c, **kw) for step, c in [(2, 1), (5, 2)]]
    assert again == done and computed == []
    third = resumed.select(None, 8, 4, current_update_times=3, **kw)
    assert computed == [1] and len(set(third)) == 4 and not set(third) & set(done[0] + done[1])
    lines = (tmp_path / "sel" / "resume-1" / "rounds.rank0.jsonl").read_text(encoding="utf-8").splitlines()
    log = [json.loads(line) for line in lines]
    assert [(r["round"], r["source"]) for r in log] == [
        (0, "computed"),
        (1, "computed"),
        (0, "stored"),
        (1, "stored"),
        (2, "computed"),
    ]
    assert log[2]["queries"] is None and log[2]["max_k"] == 4
    # a stored round asked with another budget is not replayed silently
    other = selector(svc, tmp_path, ["add 1 2"], **params)
    with pytest.raises(ValueError, match=r"round 0 is stored with other parameters \(budget: stored 4, asked 3\)"):
        other.select(None, 2, 3, current_update_times=1, **kw)


def test_max_k_grows_only_up_to_the_service_limit(
    inprocess: InProcessFactory, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(RUN_ENV, raising=False)
    svc = inprocess(redis_url=redis_server.url, max_k_limit=5)
    assert svc.client.get("/info").json()["max_k_limit"] == 5
    _, tok = train_set()
    sel = selector(svc, tmp_path, ["add 1 2"], run_id="cap-1", max_k=2, strategy="max_score")
    assert len(set(sel.select(None, 2, 5, current_update_times=1, tokenizer=tok))) == 5  # 2 -> 4 -> 5
    with pytest.raises(ValueError, match=r"even max_k 5 \(the service's limit NEAR_MAX_K_LIMIT=5\)"):
        sel.select(None, 5, 6, current_update_times=2, tokenizer=tok)
