"""atp-export eval: accuracy and agreement computed right, files written, on a VQA folder."""

import json

import pytest

from atp import cli
from tests.conftest import random_image


@pytest.fixture(scope="module")
def vqa_folder(tiny_session, tmp_path_factory):
    """6 questions; answers = the dense model's own answer for the first 3, a wrong one for the rest."""
    root = tmp_path_factory.mktemp("vqa")
    items = []
    for i in range(6):
        random_image(100 + i).save(root / f"{i}.png")
        q = "what colour is the circle" if i % 2 else "is there a blue triangle"
        dense = tiny_session.generate(root / f"{i}.png", q, max_new_tokens=8).text
        items.append({"image": f"{i}.png", "question": q, "answer": dense if i < 3 else "definitely-not-this"})
    (root / "questions.json").write_text(json.dumps(items))
    return root


def test_eval_numbers_and_files(tiny_bundle, vqa_folder, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = cli.main(["eval", str(tiny_bundle), "--data", str(vqa_folder), "--keep-ratios", "1", "0.25", "--out", str(out)])
    assert rc == 0 and "| cls | fp32 |" in capsys.readouterr().out
    report = json.loads((out / "results.json").read_text())
    rows = {(r["scorer"], r["keep_ratio"]): r for r in report["results"]}
    dense = rows[("cls", 1.0)]
    assert dense["n"] == 6 and dense["k"] == 16 and dense["accuracy"] == pytest.approx(0.5) and dense["agreement"] == 1.0
    assert dense["hits"] == "111000"  # per question, for paired comparisons
    pruned = rows[("cls", 0.25)]
    assert len(pruned["hits"]) == 6 and pruned["hits"].count("1") / 6 == pytest.approx(pruned["accuracy"])
    assert rows[("cls", 0.25)]["k"] == 4 and 0 <= rows[("cls", 0.25)]["agreement"] <= 1
    assert (out / "results.md").read_text().startswith("# ")
    assert (out / "accuracy.png").stat().st_size > 1000


def test_eval_bad_input(tiny_bundle, tmp_path, capsys):
    rc = cli.main(["eval", str(tiny_bundle), "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 2 and "questions.json is missing" in capsys.readouterr().err
    rc = cli.main(["eval", str(tiny_bundle), "--data", "multi-object", "--keep-ratios", "0", "--out", str(tmp_path / "o")])
    assert rc == 2 and "(0, 1]" in capsys.readouterr().err


def test_multi_object_is_seeded_and_split():
    from atp import datasets

    a, b = datasets.multi_object("test", 20), datasets.multi_object("test", 20)
    assert [(s.question, s.answer) for s in a] == [(s.question, s.answer) for s in b]
    assert all((x.image == y.image).all() for x, y in zip(a, b))
    calib = datasets.multi_object("calib", 20)
    assert not all((x.image == y.image).all() for x, y in zip(a[:5], calib[:5]))
    assert {s.answer for s in a} <= {"yes", "no", "two", "three", "four", *datasets.SHAPES, *datasets.COLORS}
