"""``atp-export engine``: build TensorRT engines for a bundle."""

from __future__ import annotations

import sys

from atp.cli._common import fmt

ENGINE_EPILOG = fmt("""
    examples:
      atp-export engine build/demo --target desktop                 # sm_86 + sm_89, TensorRT-RTX ahead of time
      atp-export engine build/demo --target ada --max-sequence 512 --max-context 1024
      atp-export engine build/demo --target orin --fp16 --plugins build/plugins/libatp_plugins.so   # on the Jetson

    Targets: orin (sm_87), ampere (sm_86), ada (sm_89), hopper (sm_90), blackwell (sm_120),
    desktop (sm_86 + sm_89). Every engine's profile covers the kept-token count K from 1 to N.
    Full TensorRT builds for the GPU it runs on; TensorRT-RTX builds ahead of time without a GPU
    for sm_75/80/86/89/120/121 (not Orin's sm_87 or Hopper's sm_90).
""")


def add_engine_parser(sub, raw) -> None:
    g = sub.add_parser("engine", help="build TensorRT engines for a bundle", epilog=ENGINE_EPILOG, formatter_class=raw,
                       description="Build one TensorRT engine per graph of a bundle, with optimization profiles from its "
                       "manifest, into BUNDLE/engines/<target>/ (manifest updated).")
    g.add_argument("bundle", metavar="BUNDLE")
    g.add_argument("--target", required=True, metavar="NAME", help="orin, ampere, ada, hopper, blackwell or desktop")
    g.add_argument("--fp16", action="store_true", help="allow fp16 kernels (full TensorRT; TensorRT-RTX is strongly typed)")
    g.add_argument("--int8", action="store_true", help="allow int8 kernels (full TensorRT)")
    g.add_argument("--plugins", metavar="PATH", help="libatp_plugins.so, for graphs with atp plugin nodes")
    g.add_argument("--workspace", type=int, default=1024, metavar="MB", help="workspace memory limit (default: 1024)")
    g.add_argument("--max-batch", type=int, default=1, metavar="B", help="largest batch in the profiles (default: 1)")
    g.add_argument("--max-sequence", type=int, default=1024, metavar="T", help="largest prefill length (default: 1024)")
    g.add_argument("--max-context", type=int, default=2048, metavar="T", help="largest KV-cache length (default: 2048)")
    g.add_argument("--graphs", nargs="+", default=None, metavar="KEY", help="graphs to build (default: all)")
    g.add_argument("--timing-cache", metavar="PATH", help="timing cache file (full TensorRT; default under ~/.cache/atp)")


def cmd_engine(args) -> int:
    from atp.export.engine import EngineConfig, build_bundle_engines

    cfg = EngineConfig(target=args.target, fp16=args.fp16, int8=args.int8, workspace_mb=args.workspace,
                       max_batch=args.max_batch, max_sequence=args.max_sequence, max_context=args.max_context,
                       graphs=tuple(args.graphs) if args.graphs else None, plugins=args.plugins,
                       timing_cache=args.timing_cache)
    entry = build_bundle_engines(args.bundle, cfg)
    for g in entry["graphs"].values():
        print(f"{g['file']}: {', '.join(p['name'] for p in g['profiles'])}")
    print(f"built {len(entry['graphs'])} engine(s) with {entry['builder']} {entry['tensorrt_version']} for "
          f"{args.target} ({', '.join(entry['compute_capabilities'])})", file=sys.stderr)
    return 0
