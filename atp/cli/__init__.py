"""``atp-export``: the one command-line entry point.

Heavy imports (torch, transformers, onnxruntime) happen inside the subcommands so
``atp-export --help`` is instant. Every :class:`~atp.errors.AtpError` becomes one
``error: ...`` line on stderr and exit code 2; ``--verbose`` adds the traceback.

One module per subcommand group holds its help text, its flags (``add_<name>_parser``) and
its body (``cmd_<name>``); this module assembles the parser and dispatches.
"""

from __future__ import annotations

import argparse
import logging
import sys

from atp.cli._common import fmt
from atp.cli.calibrate import CALIBRATE_EPILOG, add_calibrate_parser, cmd_calibrate
from atp.cli.engine import ENGINE_EPILOG, add_engine_parser, cmd_engine
from atp.cli.inspect import INSPECT_EPILOG, add_inspect_parser, add_list_parser, cmd_inspect, cmd_list
from atp.cli.measure import BENCH_EPILOG, EVAL_EPILOG, add_bench_parser, add_eval_parser, cmd_bench, cmd_eval
from atp.cli.onnx import ONNX_EPILOG, add_onnx_parser, cmd_onnx
from atp.cli.run import RUN_EPILOG, add_run_parser, cmd_run
from atp.errors import AtpError

__all__ = ["MAIN_EPILOG", "ONNX_EPILOG", "RUN_EPILOG", "INSPECT_EPILOG", "EVAL_EPILOG", "BENCH_EPILOG", "CALIBRATE_EPILOG",
           "ENGINE_EPILOG", "COMMANDS", "build_parser", "main"]

log = logging.getLogger("atp")

MAIN_EPILOG = fmt("""
    examples:
      atp-export onnx demo --out build/demo                       # embedded default: the trained demo VLM
      atp-export onnx ./llava-1.5-7b-hf --out build/llava --keep-ratio 0.25
      atp-export run build/demo --image assets/demo.png --prompt "What shapes do you see?" --keep 64
      atp-export inspect build/demo
      atp-export eval build/demo --data easy-vqa --limit 500 --out build/eval-easy
      atp-export calibrate demo --data multi-object --out build/calib-demo --limit 200
      atp-export list
""")

# (add parser, run) per subcommand, in the order `atp-export --help` lists them
_SUBCOMMANDS = {"onnx": (add_onnx_parser, cmd_onnx), "run": (add_run_parser, cmd_run),
                "inspect": (add_inspect_parser, cmd_inspect), "eval": (add_eval_parser, cmd_eval),
                "bench": (add_bench_parser, cmd_bench), "calibrate": (add_calibrate_parser, cmd_calibrate),
                "engine": (add_engine_parser, cmd_engine), "list": (add_list_parser, cmd_list)}
COMMANDS = {name: run for name, (_, run) in _SUBCOMMANDS.items()}


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of ``atp-export``."""
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="atp-export", description="Prune, quantize and export vision-language models for edge GPUs.",
                                epilog=MAIN_EPILOG, formatter_class=raw)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser, _ in _SUBCOMMANDS.values():
        add_parser(sub, raw)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``atp-export``; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    if not args.verbose:
        for noisy in ("httpx", "urllib3", "filelock"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except AtpError as exc:
        if args.verbose:
            log.exception("failed")
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
