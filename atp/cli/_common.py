"""Helpers shared by the ``atp-export`` subcommands: help text, keep flags, model and CLIP loading."""

from __future__ import annotations

import argparse
import textwrap

from atp.errors import ConfigError


def fmt(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def _keep_or_auto(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer or 'auto', got {text!r}") from None


def add_keep_args(p: argparse.ArgumentParser, what: str, allow_auto: bool = False) -> None:
    g = p.add_mutually_exclusive_group()
    if allow_auto:
        g.add_argument("--keep", type=_keep_or_auto, metavar="K|auto",
                       help=f"visual tokens to keep {what} (1..N), or auto: K per image in the graph from the score mass, "
                            "bounded by the calibration artifact's k_min/k_max (defaults without one; keep is then the "
                            "per-request upper bound)")
    else:
        g.add_argument("--keep", type=int, metavar="K", help=f"visual tokens to keep {what} (1..N)")
    g.add_argument("--keep-ratio", type=float, metavar="R", help=f"fraction of visual tokens to keep {what}, in (0, 1]")


def quiet_transformers() -> None:
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers missing is reported where it is needed
        pass


def load_clip(args):
    """The open_clip model of ``--clip-model``/``--clip-weights`` (None without them)."""
    if args.clip_model:
        from atp.export.clip import OpenClip

        return OpenClip.load(args.clip_model, args.clip_weights)
    if args.clip_weights:
        raise ConfigError("--clip-weights needs --clip-model (the open_clip architecture name)")
    return None


def load_adapter(checkpoint: str):
    """A built-in (demo, demo-smollm2) or a local checkpoint folder, wrapped in its architecture adapter."""
    from atp.export.demo import BUILTINS

    if checkpoint in BUILTINS:
        return BUILTINS[checkpoint]()
    from atp.export.adapters import adapter_for_checkpoint

    return adapter_for_checkpoint(checkpoint).from_checkpoint(checkpoint)
