"""Paired comparison of scorers against a baseline (atp.runtime.evaluate.compare) and the token-locality bench's
patch masks and subsets."""

from types import SimpleNamespace

import numpy as np
import pytest

from atp.errors import ConfigError
from atp.runtime.evaluate import compare, comparison_table, evaluate
from tests.benchmod import load_bench


def _row(scorer, ratio, k, hits):
    hits = np.asarray(hits, bool)
    return {"scorer": scorer, "keep_ratio": ratio, "k": k, "precision": "fp32", "accuracy": float(hits.mean()),
            "agreement": 0.0, "n": len(hits), "hits": "".join("1" if h else "0" for h in hits)}


def _cells():
    rng = np.random.default_rng(0)
    n = 400
    dense = rng.random(n) < 0.95
    rand = dense & (rng.random(n) < 0.8)  # random loses ~20% of the dense answers
    better = rand | (dense & (rng.random(n) < 0.9))  # right wherever random is, and on most of what it lost
    worse = rand & (rng.random(n) < 0.7)
    rows = []
    for name, pruned in (("random", rand), ("good", better), ("same", rand), ("bad", worse)):
        rows += [_row(name, 1.0, 64, dense), _row(name, 0.25, 16, pruned)]
    return rows, dense, rand, better


def test_compare_verdicts_intervals_and_headroom():
    rows, dense, rand, better = _cells()
    got = {(r["scorer"], r["keep_ratio"]): r for r in compare(rows, "random", n_boot=2000)}
    assert {s for s, _ in got} == {"good", "same", "bad"}
    good = got[("good", 0.25)]
    assert good["diff"] == pytest.approx(better.mean() - rand.mean())
    assert 0 < good["low"] < good["diff"] < good["high"] and good["verdict"] == "above"
    assert got[("bad", 0.25)]["verdict"] == "below" and got[("bad", 0.25)]["high"] < 0
    same = got[("same", 0.25)]
    assert same["verdict"] == "level" and same["diff"] == same["low"] == same["high"] == 0
    assert good["headroom"] == pytest.approx(dense.mean() - rand.mean())
    assert got[("good", 1.0)]["verdict"] == "level"  # all tokens kept: the same answers


def test_compare_interval_is_paired():
    # Two scorers each right on 80% of questions but on different ones: unpaired they look equal, paired
    # the difference is 0 with a wide interval; a scorer right on a superset of random's hits is above even by 2%.
    n = 500
    base = np.arange(n) % 5 != 0
    plus = base.copy()
    plus[np.flatnonzero(~base)[:10]] = True
    rows = [_row("random", 0.5, 32, base), _row("plus", 0.5, 32, plus)]
    (r,) = compare(rows, "random")
    assert r["diff"] == pytest.approx(0.02) and r["low"] > 0 and r["verdict"] == "above"


def test_comparison_table_lists_every_scorer_and_headroom():
    rows, *_ = _cells()
    table = comparison_table(rows, "random")
    assert "| good | fp32 |" in table and "**above**" in table and "*below*" in table and "level" in table
    assert "keep 0.25 (K=16)" in table and "keep 1 " not in table
    assert "headroom" in table


def test_compare_errors_are_clear():
    rows, *_ = _cells()
    with pytest.raises(ConfigError, match="no 'nobody' rows"):
        compare(rows, "nobody")
    stale = [dict(r) for r in rows]
    del stale[3]["hits"]
    with pytest.raises(ConfigError, match="hits missing"):
        compare(stale, "random")


def test_evaluate_records_per_question_hits():
    answers = {"q0": "red", "q1": "circle", "q2": "yes"}

    class FakeSession:  # a scorer 'half' that gets q1 wrong whenever it prunes
        scorers = ["random", "half"]
        num_visual_tokens = 8
        manifest = {"precision": {"weights": "int4-g32"}}

        def vision_graph(self, name):
            if name not in self.scorers:
                raise ConfigError(name)

        def generate(self, image, question, keep, scorer=None, max_new_tokens=8):
            wrong = scorer == "half" and keep < 8 and question == "q1"
            return SimpleNamespace(text="square" if wrong else answers[question].upper() + ".")

    samples = [SimpleNamespace(image=None, question=q, answer=a) for q, a in answers.items()]
    rows = {(r["scorer"], r["keep_ratio"]): r for r in evaluate(FakeSession(), samples, [1.0, 0.5], progress=False)}
    assert rows[("half", 0.5)]["hits"] == "101" and rows[("half", 0.5)]["accuracy"] == pytest.approx(2 / 3)
    assert rows[("random", 0.5)]["hits"] == "111" and rows[("half", 1.0)]["hits"] == "111"
    assert rows[("half", 0.5)]["precision"] == "int4-g32"


def test_token_locality_object_patches_and_subsets():
    tl = load_bench("token_locality")
    img = np.full((32, 32, 3), 255, np.uint8)
    img[8:16, 16:24] = (200, 30, 30)  # exactly patch (1, 2) of a 4x4 grid of 8-px patches
    img[24:26, 0:8] = (30, 30, 200)  # 16 of patch (3, 0)'s 64 pixels: >= 1/8, an object patch
    img[0, 0:4] = (0, 0, 0)  # 4 pixels of patch (0, 0): below 1/8, background
    mask = tl.object_patches(img, 8)
    assert np.flatnonzero(mask).tolist() == [6, 12]
    rng = np.random.default_rng(0)
    assert set(tl.choose(mask, "object-first", 2, rng)) == {6, 12}
    first = tl.choose(mask, "object-first", 5, rng)
    assert {6, 12} <= set(first) and len(set(first)) == 5 and np.all(np.diff(first) > 0)
    bg = tl.choose(mask, "background", 14, rng)
    assert len(bg) == 14 and not {6, 12} & set(bg)
    assert tl.choose(mask, "background", 15, rng) is None
    assert len(set(tl.choose(mask, "random", 16, rng))) == 16


def test_merge_adds_counts_and_keeps_hits_aligned():
    from atp.runtime.evaluate import merge

    a = [_row("random", 0.25, 16, [1, 0, 1]), _row("idp", 0.25, 16, [1, 1, 1])]
    b = [_row("random", 0.25, 16, [0, 0]), _row("idp", 0.25, 16, [1, 0])]
    a[0]["agreement"], b[0]["agreement"] = 1.0, 0.5
    rows = {r["scorer"]: r for r in merge([a, b])}
    assert rows["random"]["hits"] == "10100" and rows["idp"]["hits"] == "11110" and rows["idp"]["n"] == 5
    assert rows["random"]["accuracy"] == pytest.approx(2 / 5) and rows["random"]["agreement"] == pytest.approx(4 / 5)
    (r,) = compare(merge([a, b]), "random")
    assert r["diff"] == pytest.approx(2 / 5)
    with pytest.raises(ConfigError, match="different scorers"):
        merge([a, b[::-1]])


def test_headroom_needs_the_dense_cell():
    rows = [r for r in _cells()[0] if r["keep_ratio"] < 1]
    assert all(r["headroom"] is None for r in compare(rows, "random"))
    table = comparison_table(rows, "random")
    assert "headroom" not in table and "| good | fp32 |" in table
