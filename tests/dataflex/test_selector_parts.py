"""The near_service selector's parts that need no DataFlex (they run in .venv): decoding DataFlex's
tokenized rows, bad parameters, and the launcher's message where DataFlex is not installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from near_client.dataflex import INSTALL_HINT, _NearService, rows_to_texts


class FakeAccelerator:
    """Stands in for accelerate's Accelerator: only ``is_main_process`` is read at construction."""

    is_main_process = False

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
