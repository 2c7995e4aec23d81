import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    extracted = subprocess.run(
        ["awk", '/<!-- test-command -->/ {found=1; next} found && /^```/ {fence++; next} found && fence==1 {print; exit}',
         str(ROOT / "README.md")], capture_output=True, text=True, check=True).stdout.strip()
    assert "pytest" in extracted and extracted in readme
    assert extracted.split("&&")[-1].strip().endswith("-m pytest")
    assert "<!-- test-command -->" in readme and "awk" in (ROOT / ".ci" / "run").read_text()


def test_readme_examples_use_real_files():
    readme = (ROOT / "README.md").read_text()
    assert "assets/shapes.png" in readme and (ROOT / "assets" / "shapes.png").is_file()
    assert "bench/prefill_pruning.py" in readme and (ROOT / "bench" / "prefill_pruning.py").is_file()
