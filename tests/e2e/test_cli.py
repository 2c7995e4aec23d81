"""atp-export end to end on the tiny checkpoint: outputs, help examples, and clear errors for bad input."""

import json
import shlex
import shutil
import subprocess
import sys

import pytest

from atp import cli
from tests.conftest import random_image

N = 16


def run_cli(args, capsys):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clean_error(rc, err, needle):
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert rc == 2, err
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "img.png"
    random_image(4, (40, 50)).save(path)
    return path


def test_run_json(tiny_bundle, image_file, capsys):
    rc, out, _ = run_cli(["run", tiny_bundle, "--image", image_file, "--prompt", "what colour", "--keep", 4,
                          "--max-new-tokens", 9, "--json"], capsys)
    res = json.loads(out)
    assert rc == 0 and set(res) == {"text", "token_ids", "kept", "kept_index", "visual_tokens", "prompt_tokens", "timings"}
    assert res["visual_tokens"] == N
    assert res["kept"] == 4 and len(res["kept_index"]) == 4 and res["kept_index"] == sorted(res["kept_index"])
    assert 1 <= len(res["token_ids"]) <= 9
    assert {"vision", "prefill", "ttft", "decode_per_token"} <= set(res["timings"])


def test_run_ratio_and_raw_prompt(tiny_bundle, image_file, capsys):
    rc, out, err = run_cli(["run", tiny_bundle, "--image", image_file, "--prompt", "what colour", "--keep-ratio", 0.5], capsys)
    assert rc == 0 and f"kept {N // 2}/{N} visual tokens" in err
    rc, out, _ = run_cli(["run", tiny_bundle, "--image", image_file, "--raw-prompt", "--prompt", "<image>\nis there", "--json"], capsys)
    assert rc == 0 and json.loads(out)["kept"] == N


def test_inspect(tiny_bundle, capsys):
    rc, out, _ = run_cli(["inspect", tiny_bundle, "--json"], capsys)
    m = json.loads(out)
    assert rc == 0 and m["format_version"] == 2 and m["pruning"]["num_visual_tokens"] == N
    assert m["graphs"]["decoder"]["mode"] == "prefill+decode" and "tokenizer/tokenizer.json" in m["files"]
    rc, out, _ = run_cli(["inspect", tiny_bundle], capsys)
    assert rc == 0 and "sha256 verified" in out and "keep[]" in out


def test_help_shows_examples_that_parse(capsys):
    parser = cli.build_parser()
    for sub in (None, "onnx", "run", "inspect", "eval", "bench", "list"):
        with pytest.raises(SystemExit) as exc:
            cli.main([sub, "--help"] if sub else ["--help"])
        assert exc.value.code == 0
        assert "example" in capsys.readouterr().out
    for text in (cli.MAIN_EPILOG, cli.ONNX_EPILOG, cli.RUN_EPILOG, cli.INSPECT_EPILOG, cli.EVAL_EPILOG, cli.BENCH_EPILOG,
                 cli.CALIBRATE_EPILOG):
        cmds = [ln.strip().split("  #")[0] for ln in text.splitlines() if ln.strip().startswith("atp-export ")]
        assert cmds
        for cmd in cmds:
            parser.parse_args(shlex.split(cmd)[1:])


@pytest.mark.parametrize("extra,needle", [
    (["--keep", 0], "keep must be >= 1"),
    (["--keep", -2], "keep must be >= 1"),
    (["--keep", N + 1], f"exceeds the {N} visual tokens"),
    (["--keep-ratio", 0], "(0, 1]"),
    (["--keep-ratio", 1.5], "(0, 1]"),
    (["--scorer", "nope"], "unknown scorer 'nope'"),
])
def test_export_rejects_bad_pruning_and_leaves_nothing(tiny_ckpt, tmp_path, capsys, extra, needle):
    rc, _, err = run_cli(["onnx", tiny_ckpt, "--out", tmp_path / "out", *extra], capsys)
    assert_clean_error(rc, err, needle)
    assert list(tmp_path.iterdir()) == []


def test_export_rejects_bad_checkpoints(tmp_path, capsys):
    rc, _, err = run_cli(["onnx", tmp_path / "missing", "--out", tmp_path / "o1"], capsys)
    assert_clean_error(rc, err, "does not exist")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    rc, _, err = run_cli(["onnx", bert, "--out", tmp_path / "o2"], capsys)
    assert_clean_error(rc, err, "unsupported architecture")
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(["onnx", tmp_path / "empty", "--out", tmp_path / "o3"], capsys)
    assert_clean_error(rc, err, "config.json is missing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llava"}))
    rc, _, err = run_cli(["onnx", broken, "--out", tmp_path / "o4"], capsys)
    assert_clean_error(rc, err, "cannot load")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "broken", "empty"]


def test_run_rejects_bad_input(tiny_bundle, image_file, tmp_path, capsys):
    bad_image = tmp_path / "photo.png"
    bad_image.write_text("not an image")
    base = ["run", tiny_bundle, "--prompt", "hi"]
    cases = [
        ([*base, "--image", bad_image], "cannot read image"),
        ([*base, "--image", tmp_path / "nope.png"], "does not exist"),
        ([*base, "--image", image_file, "--keep", 0], "keep must be >= 1"),
        ([*base, "--image", image_file, "--keep", N + 1], f"exceeds the {N} visual tokens"),
        ([*base, "--image", image_file, "--keep-ratio", 2], "(0, 1]"),
        ([*base, "--image", image_file, "--raw-prompt"], "image placeholder"),
        (["run", tmp_path / "no-bundle", "--image", image_file, "--prompt", "hi"], "does not exist"),
    ]
    for args, needle in cases:
        rc, _, err = run_cli(args, capsys)
        assert_clean_error(rc, err, needle)


def _copy(bundle, dst):
    shutil.copytree(bundle, dst)
    return dst


def test_tampered_and_unknown_version_bundles(tiny_bundle, image_file, tmp_path, capsys):
    tampered = _copy(tiny_bundle, tmp_path / "tampered")
    with open(tampered / "vision.onnx", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    rc, _, err = run_cli(["run", tampered, "--image", image_file, "--prompt", "hi"], capsys)
    assert_clean_error(rc, err, "checksum mismatch for vision.onnx")
    rc, _, err = run_cli(["inspect", tampered], capsys)
    assert_clean_error(rc, err, "checksum mismatch")
    future = _copy(tiny_bundle, tmp_path / "future")
    m = json.loads((future / "manifest.json").read_text())
    m["format_version"] = 7
    (future / "manifest.json").write_text(json.dumps(m))
    rc, _, err = run_cli(["run", future, "--image", image_file, "--prompt", "hi"], capsys)
    assert_clean_error(rc, err, "format version 7")


def test_real_entry_point_prints_one_line(tmp_path):
    exe = shutil.which("atp-export")
    cmd = [exe] if exe else [sys.executable, "-m", "atp.cli"]
    p = subprocess.run([*cmd, "run", str(tmp_path / "nothing"), "--image", "x.png", "--prompt", "hi"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"error: bundle {tmp_path / 'nothing'} does not exist or is not a directory"]


def test_bench_writes_ratios(tiny_bundle, image_file, tmp_path, capsys):
    out = tmp_path / "bench"
    rc, stdout, _ = run_cli(["bench", tiny_bundle, "--image", image_file, "--prompt", "what colour", "--keep-ratios", 1, 0.25,
                             "--repeats", 1, "--decode-tokens", 3, "--out", out], capsys)
    report = json.loads((out / "bench.json").read_text())
    rows = report["rows"]
    assert rc == 0 and [r["k"] for r in rows] == [N, 4] and "| 0.25 | 4 |" in stdout
    assert rows[0]["vs_dense"]["prefill"] == 1.0 and rows[1]["prompt_tokens"] == rows[0]["prompt_tokens"] - (N - 4)
    # analytic numbers: KV bytes scale with the prompt; prefill FLOPs shrink with it
    info = json.loads((tiny_bundle / "manifest.json").read_text())["model"]
    assert rows[1]["kv_bytes"] == 2 * info["num_layers"] * info["num_kv_heads"] * info["head_dim"] * rows[1]["prompt_tokens"] * 4
    assert rows[1]["vs_dense"]["prefill_flops"] < 1 and rows[1]["flops"]["vision"] == rows[0]["flops"]["vision"]
    assert (out / "bench.png").stat().st_size > 1000 and report["machine"]["logical_cores"] >= 1


def test_preset_cpu_fills_unset_flags_and_explicit_flags_win(tiny_ckpt, tmp_path, capsys):
    from atp.bundle import read_manifest

    out = tmp_path / "cpu"
    rc, _, err = run_cli(["onnx", tiny_ckpt, "--out", out, "--preset", "cpu", "--no-validate"], capsys)
    assert rc == 0, err
    m = read_manifest(out)
    assert m["precision"]["weights"] == "int4-g32" and m["graphs"]["decoder"]["graph"] == "fused"
    assert m["graphs"]["vision"]["weights"]["form"] == "int8"
    assert "decoder_prefill" not in m["graphs"]  # the int8 prefill graph is not accurate enough for the preset
    out2 = tmp_path / "cpu-int8"
    rc, _, err = run_cli(["onnx", tiny_ckpt, "--out", out2, "--preset", "cpu", "--weights", "int8", "--vision-weights", "fp32",
                          "--no-validate"], capsys)
    assert rc == 0, err
    m2 = read_manifest(out2)
    assert m2["precision"]["weights"] == "int8" and m2["graphs"]["decoder"]["graph"] == "fused"
    assert m2["precision"]["graphs"]["vision"]["weights"] == "fp32"
