"""Build a tiny causal LM for CPU runs of the DataFlex examples: nothing is downloaded.

A 2-layer Llama (random weights) and a byte-level BPE tokenizer trained with ``tokenizers`` on the
demo texts (or the files given), saved to one folder that ``model_name_or_path`` can point at::

    .venv-dataflex/bin/python examples/dataflex/make_tiny_model.py out/tiny-llama
    .venv-dataflex/bin/python examples/dataflex/make_tiny_model.py out/tiny-llama --data my_pool.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "demo"
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def texts(files: list[Path]) -> Iterator[str]:
    """Every string value of every JSON / JSONL record in ``files`` (plain lines for other files)."""
    for path in files:
        raw = path.read_text(encoding="utf-8")
        if path.suffix in (".json", ".jsonl"):
            rows = json.loads(raw) if path.suffix == ".json" else [json.loads(x) for x in raw.splitlines() if x.strip()]
            for row in rows:
                yield from (str(v) for v in row.values() if isinstance(v, str) and v)
        else:
            yield from (x for x in raw.splitlines() if x.strip())


def build(out: Path, files: list[Path], vocab_size: int = 512, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([*list(texts(files)), "Human: Assistant: Instruction Input Output"], trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write (config, weights, tokenizer)")
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=[DEMO / "candidates.jsonl", DEMO / "queries.jsonl"],
        help="JSON/JSONL/text files to train the tokenizer on (default: the demo pool and queries)",
    )
    parser.add_argument("--vocab-size", type=int, default=512)
    args = parser.parse_args()
    print(f"tiny model: {build(args.out, args.data, args.vocab_size)}")


if __name__ == "__main__":
    main()
