"""The ``bench:peers`` section of docs/benchmarks.md, from bench/peers.py's results (out/peers/results.json).

.venv/bin/python bench/peers_report.py [out/peers/results.json]   # print it again from a saved run
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COS_GOAL = 0.9999  # bench/peers.py's: within this cosine of sentence-transformers counts as the same vectors


def _ratio(x: float | None, ref: float | None) -> str:
    return f"{x / ref:.2f}x" if x and ref else "-"


def _embed_rows(r: dict[str, Any]) -> list[str]:
    cols, sample = r["embed"], r["sample"]
    n, tokens = sample["texts"], sample["tokens"]
    limit_tps = r["gemm"]["peak"] / (sample["flops"] / tokens) if "gemm" in r else None

    def tps(name: str) -> float | None:
        c = cols.get(name, {})
        return tokens / c["seconds"] if "seconds" in c else None

    ours, ours_http = tps("ours"), tps("ours-http")
    lines = [
        "| column | dtype | start (s) | texts/s | tokens/s | vs ours (pool path) | vs ours (HTTP) "
        "| of the GEMM limit | min cosine vs ST |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in cols.items():
        if "error" in c:
            lines.append(f"| {c['how']} | {c['dtype']} | - | - | - | - | - | - | **not measured: {c['error']}** |")
            continue
        how = f"{c['how']}: {c['note']}" if c.get("note") else c["how"]
        t = tps(name)
        assert t is not None
        server = name not in ("st", "ours")
        below = c.get("below_goal", 0)
        cos = f"{c.get('min_cos', float('nan')):.6f}" + (f" ({below} of {n} below {COS_GOAL})" if below else "")
        lines.append(
            f"| {how} | {c['dtype']} | {c['load_s']:.0f} | {n / c['seconds']:,.1f} | {t:,.0f} | "
            f"{_ratio(t, ours)} | {_ratio(t, ours_http) if server else '-'} | "
            f"{f'{t / limit_tps:.0%}' if limit_tps else '-'} | {cos} |"
        )
    if limit_tps:
        lines.append(
            f"| **GEMM limit** (peak matmul {r['gemm']['peak'] / 1e9:.1f} GFLOP/s, {r['dtype']}) | {r['dtype']} | - | "
            f"{n * limit_tps / tokens:,.1f} | {limit_tps:,.0f} | {_ratio(limit_tps, ours)} | - | 100% | - |"
        )
    return lines


def render(r: dict[str, Any]) -> str:
    s, a = r["sample"], r["args"]
    loads = ", ".join(f"{k} {v:.1f}" for k, v in r.get("loads", {}).items())
    isa = ", ".join(r["isa"]) + (
        "; no AVX512-BF16/AMX, so every column runs float32" if r["dtype"] == "float32" else ""
    )
    lines = [
        f"Peers side by side, `make bench-peers` ({r['date']}): {r['cpu']}, {r['cores']} cores ({isa}).",
        f"Model all-MiniLM-L6-v2 (the packaged copy, by its local path) for every column; torch threads = cores. "
        f"1-minute load average at each phase (the cores are shared with other jobs): {loads}.",
        f"Peers: {', '.join(f'{k}: {v}' for k, v in r['peers'].items())}.",
        "",
    ]
    if r.get("kept"):
        lines[-1:] = [
            f"Phases {', '.join(r['kept']['phases'])} are kept from the run of {r['kept']['from']} (`--keep`); "
            "the others were measured again on the date above. Each phase's columns are measured together.",
            "",
        ]
    if "embed" in r:
        lines += [
            f"**Embedding throughput**: {s['texts']} texts sampled (seed 0) from the GSM8K mix pool "
            f"({s['pool']} texts), {s['tokens']:,} tokens (truncated at 256: {s.get('truncated', '?')} texts), "
            f"{s['flops'] / s['texts'] / 1e9:.2f} GFLOP per text. In-process columns: a fresh process, model loaded "
            f"and warmed first, the embedding timed. Servers: ready first (start = spawn to ready), then "
            f"{a['concurrency']} client threads posting {a['per_request']} texts a request. GEMM limit: the best "
            "torch matmul FLOP/s here (square and the model's own shapes) over the model's FLOPs per token of the "
            "sample (its linear layers and attention, no padding). Ratios: the column's tokens/s over ours, "
            f"below 1 means ours is faster. Cosine: each text's vector against sentence-transformers' "
            f"(goal >= {COS_GOAL}).",
            "",
            *_embed_rows(r),
            "",
        ]
    if "search" in r:
        lines += [
            "**Exact search** (synthetic unit vectors, d 384; median of 3, 1 at 1M rows; ratios = peer time / ours, "
            "above 1 means we are faster):",
            "",
            "| rows | queries | K | ours | FAISS IndexFlatIP | numpy floor | FAISS / ours | floor / ours "
            "| top-K overlap with floor |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for x in r["search"]:
            f = x["faiss"]
            lines.append(
                f"| {x['n']:,} | {x['q']} | {x['k']} | {x['ours'] * 1e3:,.0f} ms | "
                f"{f'{f * 1e3:,.0f} ms' if f else 'not measured'} | {x['floor'] * 1e3:,.0f} ms | "
                f"{_ratio(f, x['ours'])} | {_ratio(x['floor'], x['ours'])} | {x['overlap']:.4f} |"
            )
        lines.append("")
    if "e2e" in r:
        e = r["e2e"]
        ks = [str(k) for k in e.get("ks", [100, 1000])]
        lines += [
            f"**End to end**: the pool as one alpaca JSON ({e['pool']} rows), {e['queries']} GSM8K test questions "
            f"(alpaca JSON), max_K {e['max_k']}; fresh processes, wall time from spawn to exit. DataFlex: "
            "`offline_near_Selector(candidate_path, query_path, embed_model=<MiniLM path>)` with its defaults "
            "(`embed_method='auto'`, batch 32, IVFFlat nprobe 10). Ours: `near-select offline --template dataflex` "
            "(the same strings), empty cache. Exact = brute force over fp32 embeddings of the same texts.",
            "",
            f"| run | embedding dtype | wall (s) | ours is faster by | {' | '.join(f'recall@{k}' for k in ks)} |",
            "|---|---|---|---|" + "---|" * len(ks),
            f"| `near-select offline` | {e['ours_dtype']} | {e['ours_s']:.1f} | 1.00x | "
            + " | ".join(f"{e['ours_recall'][k]:.4f}" for k in ks)
            + " |",
        ]
        if "dataflex_error" in e:
            lines.append(
                f"| DataFlex offline NEAR | - | - | - | **not measured: {e['dataflex_error']}** |"
                + " - |" * (len(ks) - 1)
            )
        else:
            lines.append(
                f"| DataFlex offline NEAR ({e['dataflex_backend']}) | float32 | {e['dataflex_s']:.1f} | "
                f"{e['dataflex_s'] / e['ours_s']:.2f}x | "
                + " | ".join(f"{e['dataflex_recall'][k]:.4f}" for k in ks)
                + " |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "out/peers/results.json")
    print(render(json.loads(path.read_text())))
