"""Query sets for :class:`~near_client.NearSelectionCallback`: what the selection should follow.

A query set is a list of texts, or a callable ``(model, state) -> list[str]`` called at each update
in the main process. :class:`HighestLossQueries` is the built-in callable: the validation examples
the current model gets most wrong, so that the selection follows what the model still has to learn.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("HighestLossQueries needs torch: pip install 'near-select[train]'") from exc

__all__ = ["HighestLossQueries", "QueryFn"]

QueryFn = Callable[[Any, Any], Sequence[str]]


class HighestLossQueries:
    """Queries = the ``n`` validation texts on which the current model's loss is highest.

    Give the texts and either a ``tokenizer`` (the loss is the causal-LM loss over each whole text)
    or ``features`` (one dict per text with ``input_ids`` and optionally ``labels``, e.g. the
    tokenized validation set with the prompt masked to -100, to score answers only).

    >>> queries = HighestLossQueries(val_texts, n=64, tokenizer=tokenizer)        # doctest: +SKIP
    >>> NearSelectionCallback(client, queries=queries, warmup_step=100, update_step=100,
    ...                       update_times=5, max_k=200)                           # doctest: +SKIP

    ``last_losses`` holds the per-example losses of the latest call (for logging).
    """

    def __init__(
        self,
        texts: Sequence[str],
        n: int,
        *,
        tokenizer: Any = None,
        features: Sequence[Mapping[str, Any]] | None = None,
        batch_size: int = 8,
        max_length: int = 512,
    ) -> None:
        if not texts:
            raise ValueError("HighestLossQueries needs at least one validation text")
        if (tokenizer is None) == (features is None):
            raise ValueError("give exactly one of tokenizer= or features=")
        if features is not None and len(features) != len(texts):
            raise ValueError(f"{len(features)} features for {len(texts)} texts: give one per text")
        if n < 1:
            raise ValueError("n must be >= 1")
        self.texts = list(texts)
        self.n = min(n, len(self.texts))
        self.batch_size = batch_size
        if features is None:
            enc = tokenizer(self.texts, truncation=True, max_length=max_length)
            features = [{"input_ids": ids} for ids in enc["input_ids"]]
        self.features = list(features)
        self.last_losses: np.ndarray | None = None

    def __call__(self, model: Any, state: Any = None) -> list[str]:
        losses = self.losses(model)
        self.last_losses = losses
        order = np.argsort(-losses, kind="stable")[: self.n]
        return [self.texts[i] for i in order]

    @torch.no_grad()
    def losses(self, model: torch.nn.Module) -> np.ndarray:
        """Mean token loss of every validation example under ``model`` (in eval mode, no grad)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out: list[np.ndarray] = []
        try:
            for lo in range(0, len(self.features), self.batch_size):
                ids, mask, labels = _pad(self.features[lo : lo + self.batch_size])
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
                out.append(_per_example_loss(logits, labels.to(device)).cpu().numpy())
        finally:
            model.train(was_training)
        return np.concatenate(out)


def _pad(batch: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(len(f["input_ids"]) for f in batch)
    ids = torch.zeros((len(batch), length), dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    labels = torch.full((len(batch), length), -100, dtype=torch.long)
    for row, f in enumerate(batch):
        seq = torch.as_tensor(list(f["input_ids"]), dtype=torch.long)
        lab = torch.as_tensor(list(f.get("labels", f["input_ids"])), dtype=torch.long)
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
        labels[row, : len(lab)] = lab
    return ids, mask, labels


def _per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    tok = torch.nn.functional.cross_entropy(
        shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none"
    )
    valid = (shift_labels != -100).float()
    return (tok * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)
