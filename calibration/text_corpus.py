"""Real English text for calibration and perplexity: the Debian ``fortunes`` package.

``fortunes`` (BSD fortune-mod data files: quotations, literature, jokes, definitions; ~440k
words) is fetched with ``apt-get download`` into a cache directory (never committed) and unpacked
with ``dpkg-deb -x``. Fortunes are split deterministically by a hash of their text: calibration
draws only from the ``calibration`` split, perplexity only from the held-out ``eval`` split.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from atp.errors import CalibrationError

log = logging.getLogger(__name__)

PACKAGE = "fortunes"
SKIP_FILES = {"ascii-art", "translate-me"}  # pictures and non-English text
CALIBRATION_PERCENT = 20


def cache_dir() -> Path:
    return Path(os.environ.get("ATP_CACHE", Path.home() / ".cache" / "atp")) / "corpora"


def fetch_fortunes(cache: Path | None = None) -> Path:
    """Folder of the unpacked fortune files (downloaded once).

    Raises:
        CalibrationError: apt-get or dpkg-deb missing or the download failed.
    """
    root = (cache or cache_dir()) / PACKAGE
    data = root / "usr" / "share" / "games" / "fortunes"
    if data.is_dir() and any(data.iterdir()):
        return data
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise CalibrationError("the fortunes corpus needs apt-get and dpkg-deb (Debian); give --text FILE instead")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        res = subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        if res.returncode != 0 or not debs:
            raise CalibrationError(f"apt-get download {PACKAGE} failed ({res.stderr.strip()[-200:]}); give --text FILE instead")
        out = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(out)], check=True)
        (out / "SOURCE").write_text(f"Debian package {debs[0].name}\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(out, root)
    log.info("fetched the %s corpus into %s", PACKAGE, root)
    return data


def fortunes_source() -> str:
    """Which Debian package file the fortunes corpus came from (e.g. ``Debian package fortunes_1%3a1.99.1-7.3_all.deb``)."""
    data = fetch_fortunes()
    src = data.parents[3] / "SOURCE"
    return src.read_text().strip() if src.is_file() else f"Debian package {PACKAGE}"


def read_fortunes(folder: Path) -> list[str]:
    """All fortunes (text between ``%`` lines) of the English data files, in a fixed order."""
    texts = []
    for f in sorted(folder.iterdir()):
        if f.suffix or f.name in SKIP_FILES or not f.is_file():
            continue
        body = f.read_text(encoding="utf-8", errors="replace")
        texts.extend(t.strip() for t in body.split("\n%\n") if t.strip())
    return texts


def split_of(text: str) -> str:
    """``calibration`` or ``eval``, fixed by the text's hash."""
    h = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 100
    return "calibration" if h < CALIBRATION_PERCENT else "eval"


def corpus_texts(split: str, source: str | None = None) -> list[str]:
    """Texts of one split: of the fortunes corpus (``source=None``), or of a text file (paragraphs)."""
    if split not in ("calibration", "eval"):
        raise CalibrationError(f"split must be calibration or eval, got {split!r}")
    if source:
        path = Path(source)
        if not path.is_file():
            raise CalibrationError(f"calibration text file {source} does not exist")
        texts = [p.strip() for p in path.read_text(encoding="utf-8", errors="replace").split("\n\n") if p.strip()]
    else:
        texts = read_fortunes(fetch_fortunes())
    out = [t for t in texts if split_of(t) == split]
    if not out:
        raise CalibrationError(f"the {split} split of {source or PACKAGE} is empty: give more text")
    return out


def token_stream(tokenizer, texts: list[str], max_tokens: int) -> list[int]:
    """Texts tokenized and joined with the EOS token (as in LM pre-training), cut at ``max_tokens``."""
    sep = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if sep is not None:
            ids.append(sep)
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens]
