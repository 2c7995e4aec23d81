import subprocess
import sys


def test_import_atp_pulls_no_torch():
    code = ("import sys, atp, atp.bundle, atp.config, atp.registry, atp.errors, atp.cli; "
            "bad = [m for m in ('torch', 'transformers', 'onnxruntime', 'tensorrt') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import atp pulled in: {out}"


def test_runtime_imports_no_torch():
    code = "import sys, atp.runtime; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
