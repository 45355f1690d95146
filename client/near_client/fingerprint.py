"""The pool fingerprint: lets a training job check that the service holds its dataset."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def fingerprint(texts: Sequence[str]) -> str:
    """A stable fingerprint of an ordered list of texts (16 hex digits of a SHA-256).

    The service reports it for its candidate pool in every ``/select`` answer and in ``/info``.

    >>> fingerprint(["a", "b"]) == fingerprint(["a", "b"]) != fingerprint(["b", "a"])
    True
    """
    h = hashlib.sha256()
    h.update(str(len(texts)).encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:16]
