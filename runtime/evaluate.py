"""``atp-export eval``: answer accuracy and agreement with the dense model, per scorer and keep ratio.

Runs on bundles only (no torch). For every question, the dense answer (all N visual tokens;
identical for every scorer) is computed once and reused for the agreement column.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from atp import datasets
from atp.config import resolve_keep
from atp.errors import ConfigError

from atp.bundle import precision_label

log = logging.getLogger(__name__)

DEFAULT_RATIOS = (1.0, 0.5, 0.25, 0.125, 0.0625)


def normalize(text: str) -> str:
    """Lower case, punctuation and surrounding whitespace removed: answers compare by exact match."""
    return re.sub(r"[^\w\s]", "", text.lower()).strip()


def evaluate(session, samples, keep_ratios=DEFAULT_RATIOS, scorers=None, max_new_tokens: int = 8, progress: bool = True) -> list[dict]:
    """Accuracy and dense agreement for every (scorer, keep ratio).

    Args:
        session: An :class:`atp.runtime.Session`.
        samples: :class:`atp.datasets.VqaSample` list.
        keep_ratios: Fractions of visual tokens to keep, each in (0, 1].
        scorers: Scorers to compare (default: all the bundle has).

    Returns:
        ``[{"scorer", "keep_ratio", "k", "precision", "accuracy", "agreement", "n", "hits"}, ...]``; ``hits`` is one
        character per question, ``1`` where the answer was right (for paired comparisons: :func:`compare`).
    """
    from tqdm import tqdm

    if not samples:
        raise ConfigError("no samples to evaluate")
    scorers = list(scorers or session.scorers)
    for name in scorers:
        session.vision_graph(name)  # clear error for a scorer the bundle lacks
    n_tokens = session.num_visual_tokens
    ks = {r: resolve_keep(n_tokens, keep_ratio=r) for r in keep_ratios}
    precision = precision_label(session.manifest)
    correct = {(s, r): 0 for s in scorers for r in keep_ratios}
    agree = dict.fromkeys(correct, 0)
    hits: dict[tuple, list[str]] = {key: [] for key in correct}
    for sample in tqdm(samples, desc="eval", disable=not progress, mininterval=5):
        answer = normalize(sample.answer)
        dense = normalize(session.generate(sample.image, sample.question, keep=n_tokens, max_new_tokens=max_new_tokens).text)
        for s in scorers:
            for r, k in ks.items():
                pred = dense if k == n_tokens else normalize(
                    session.generate(sample.image, sample.question, keep=k, scorer=s, max_new_tokens=max_new_tokens).text)
                correct[(s, r)] += pred == answer
                agree[(s, r)] += pred == dense
                hits[(s, r)].append("1" if pred == answer else "0")
    n = len(samples)
    return [{"scorer": s, "keep_ratio": r, "k": ks[r], "precision": precision, "accuracy": correct[(s, r)] / n,
             "agreement": agree[(s, r)] / n, "n": n, "hits": "".join(hits[(s, r)])} for s in scorers for r in keep_ratios]


def merge(parts: list[list[dict]]) -> list[dict]:
    """Combine :func:`evaluate` results over disjoint shards of questions (e.g. one per worker process) into one
    result per cell: counts add up, ``hits`` concatenate in shard order (the same order for every scorer, so
    paired comparisons stay aligned)."""
    if not parts:
        raise ConfigError("no results to merge")
    keys = [(r["scorer"], r["keep_ratio"], r["precision"]) for r in parts[0]]
    out = []
    for i, key in enumerate(keys):
        rows = [part[i] for part in parts]
        if any((r["scorer"], r["keep_ratio"], r["precision"]) != key for r in rows):
            raise ConfigError("shards were evaluated with different scorers, keep ratios or precisions")
        n = sum(r["n"] for r in rows)
        out.append({**rows[0], "n": n, "accuracy": sum(r["accuracy"] * r["n"] for r in rows) / n,
                    "agreement": sum(r["agreement"] * r["n"] for r in rows) / n, "hits": "".join(r["hits"] for r in rows)})
    return out


def compare(results: list[dict], baseline: str = "random", n_boot: int = 4000, seed: int = 0) -> list[dict]:
    """Each scorer's accuracy against ``baseline``'s on the same questions, with a paired bootstrap 95% interval.

    Both scorers answered the same questions, so the difference is judged per question (resampling
    questions, not cells): ``above``/``below`` when the whole interval lies above/below zero, else ``level``.
    ``headroom`` is what the baseline loses against all tokens kept (dense accuracy - baseline accuracy; None
    when keep ratio 1 was not evaluated):
    where it is within noise, a scorer above the baseline would have to beat the dense model.

    Args:
        results: :func:`evaluate` rows (with ``hits``) that include ``baseline``.
        baseline: the scorer to compare against.
        n_boot: bootstrap resamples.

    Returns:
        ``[{"scorer", "precision", "keep_ratio", "k", "diff", "low", "high", "verdict", "headroom", "n"}, ...]``
        for every scorer other than the baseline.
    """
    import numpy as np

    by = {(r["scorer"], r["precision"], r["keep_ratio"]): r for r in results}
    if not any(s == baseline for s, _, _ in by):
        raise ConfigError(f"no {baseline!r} rows to compare against (scorers: {sorted({s for s, _, _ in by})})")
    rng = np.random.default_rng(seed)
    out = []
    for (s, p, ratio), row in sorted(by.items()):
        base = by.get((baseline, p, ratio))
        if s == baseline or base is None:
            continue
        if "hits" not in row or "hits" not in base or len(row["hits"]) != len(base["hits"]):
            raise ConfigError(f"{s}/{baseline} at keep {ratio:g}: per-question hits missing or of different lengths "
                              "(results from an older atp-export eval?)")
        a = np.frombuffer(row["hits"].encode(), np.uint8) - ord("0")
        b = np.frombuffer(base["hits"].encode(), np.uint8) - ord("0")
        d = a.astype(np.int64) - b
        # Resampling questions with replacement, done exactly on the counts: d is -1, 0 or +1 per question.
        counts = rng.multinomial(len(d), [np.mean(d > 0), np.mean(d < 0), np.mean(d == 0)], size=n_boot)
        boot = (counts[:, 0] - counts[:, 1]) / len(d)
        low, high = (float(x) for x in np.quantile(boot, [0.025, 0.975]))
        dense = by.get((baseline, p, 1.0))  # all tokens kept: headroom needs it
        out.append({"scorer": s, "precision": p, "keep_ratio": ratio, "k": row["k"], "diff": float(d.mean()), "low": low,
                    "high": high, "verdict": "above" if low > 0 else "below" if high < 0 else "level",
                    "headroom": None if dense is None else dense["accuracy"] - base["accuracy"], "n": len(d)})
    return out


def comparison_table(results: list[dict], baseline: str = "random") -> str:
    """Markdown: accuracy difference to ``baseline`` per scorer and keep ratio, 95% interval and verdict."""
    rows = compare(results, baseline)
    ratios = sorted({r["keep_ratio"] for r in rows if r["keep_ratio"] < 1}, reverse=True)
    if not ratios:
        return ""
    by = {(r["scorer"], r["precision"], r["keep_ratio"]): r for r in rows}
    keys = sorted({(r["scorer"], r["precision"]) for r in rows})
    head = "| scorer | precision | " + " | ".join(f"keep {x:g} (K={by[(*keys[0], x)]['k']})" for x in ratios) + " |"
    lines = [f"accuracy minus `{baseline}`'s on the same questions, paired bootstrap 95% interval: **above** / level / "
             "*below* (the interval clears zero or not)", "", head, "|---|---|" + "---:|" * len(ratios)]
    for s, p in keys:
        cells = []
        for x in ratios:
            r = by[(s, p, x)]
            mark = {"above": "**above**", "below": "*below*", "level": "level"}[r["verdict"]]
            cells.append(f"{r['diff']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] {mark}")
        lines.append(f"| {s} | {p} | " + " | ".join(cells) + " |")
    heads = sorted({(r["precision"], r["keep_ratio"], r["headroom"]) for r in rows
                    if r["keep_ratio"] < 1 and r["headroom"] is not None}, key=lambda t: (t[0], -t[1]))
    if heads:
        lines += ["", f"`{baseline}`'s headroom (dense accuracy minus `{baseline}`'s; where it is within noise, a scorer above "
                  f"`{baseline}` would have to beat the dense model): "
                  + ", ".join(f"keep {x:g} {h:+.3f}" + (f" ({p})" if len({q for q, _, _ in heads}) > 1 else "") for p, x, h in heads)]
    return "\n".join(lines) + "\n"


def markdown_table(results: list[dict], title: str) -> str:
    """Rows: scorer x precision; columns: keep ratios (accuracy, with agreement in brackets)."""
    ratios = sorted({r["keep_ratio"] for r in results}, reverse=True)
    rows = sorted({(r["scorer"], r["precision"]) for r in results})
    by = {(r["scorer"], r["precision"], r["keep_ratio"]): r for r in results}
    head = "| scorer | precision | " + " | ".join(f"keep {x:g} (K={by[(rows[0][0], rows[0][1], x)]['k']})" for x in ratios) + " |"
    lines = [f"# {title}", "", "accuracy (agreement with the dense model's answer)", "", head,
             "|---|---|" + "---:|" * len(ratios)]
    for s, p in rows:
        cells = [f"{by[(s, p, x)]['accuracy']:.3f} ({by[(s, p, x)]['agreement']:.3f})" for x in ratios]
        lines.append(f"| {s} | {p} | " + " | ".join(cells) + " |")
    lines += ["", f"n = {results[0]['n']} questions per cell"]
    return "\n".join(lines) + "\n"


def report_markdown(results: list[dict], title: str, baseline: str = "random") -> str:
    """:func:`markdown_table`, followed by :func:`comparison_table` when ``baseline`` and another scorer were run."""
    table = markdown_table(results, title)
    scorers = {r["scorer"] for r in results}
    if baseline in scorers and len(scorers) > 1:
        table += "\n" + comparison_table(results, baseline)
    return table


def plot(results: list[dict], path: Path, title: str) -> bool:
    """Accuracy vs keep ratio, one line per scorer/precision; False when matplotlib is missing."""
    from atp.runtime.plotting import plot_vs_keep_ratio

    series: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        series.setdefault(f"{r['scorer']} / {r['precision']}", []).append((r["keep_ratio"], r["accuracy"]))
    return plot_vs_keep_ratio(dict(sorted(series.items())), path, title, "accuracy")


def run_eval(bundle, data: str, out, split: str = "test", keep_ratios=DEFAULT_RATIOS, scorers=None, limit: int | None = None,
             backend: str = "ort", max_new_tokens: int = 8, seed: int = 0) -> dict:
    """Evaluate a bundle on a data set and write ``results.json``, ``results.md`` and ``accuracy.png`` into ``out``."""
    from atp.runtime import Session

    for r in keep_ratios:
        resolve_keep(1, keep_ratio=r)  # validates the ratio
    session = Session(bundle, backend=backend)
    samples = datasets.subsample(datasets.load(data, split), limit, seed=seed)
    log.info("evaluating %s on %d %s questions (%s split)", bundle, len(samples), data, split)
    results = evaluate(session, samples, keep_ratios, scorers, max_new_tokens)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{Path(bundle).name} on {data} ({split}, n={len(samples)})"
    report = {"bundle": str(bundle), "source": session.manifest["source"]["checkpoint"], "data": data, "split": split,
              "results": results}
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "results.md").write_text(report_markdown(results, title))
    plot(results, out / "accuracy.png", title)
    return report
