"""``atp-export inspect`` (a bundle's manifest) and ``atp-export list`` (what is registered)."""

from __future__ import annotations

import json

from atp.cli._common import fmt

INSPECT_EPILOG = fmt("""
    examples:
      atp-export inspect build/demo
      atp-export inspect build/demo --json
""")


def add_inspect_parser(sub, raw) -> None:
    i = sub.add_parser("inspect", help="print a bundle's manifest (and verify its checksums)", epilog=INSPECT_EPILOG,
                       formatter_class=raw)
    i.add_argument("bundle", metavar="BUNDLE")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.add_argument("--no-verify", action="store_true", help="skip the sha256 check")


def add_list_parser(sub, raw) -> None:
    sub.add_parser("list", help="list registered architectures, scorers and backends",
                   epilog="example:\n  atp-export list", formatter_class=raw)


def _safe(text) -> str:
    """A manifest string as text a terminal shows literally: control characters (escape sequences) are escaped."""
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in str(text))


def cmd_inspect(args) -> int:
    import builtins

    from atp.bundle import read_manifest

    m = read_manifest(args.bundle, verify=not args.no_verify)
    print = lambda *a, **k: builtins.print(*(_safe(x) for x in a), **k)  # noqa: A001, E731  (manifest text is untrusted)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    model, pr = m["model"], m["pruning"]
    print(f"bundle      {args.bundle} (format {m['format_version']}, atp {m.get('atp_version')})")
    print(f"source      {m['source']['checkpoint']} [{m['source']['architecture']}]")
    print(f"model       {model['text_model_type']} {model['num_layers']} layers x {model['hidden_size']}, "
          f"vocab {model['vocab_size']}; vision {model['vision_model_type']}, {model['num_visual_tokens']} visual tokens")
    if m.get("precision"):
        from atp.bundle import precision_label

        print(f"precision   {precision_label(m)} (decoder weights, KV cache); vision fp32")
    print(f"pruning     scorer {pr['scorer']}, default keep {pr['default_keep']}/{pr['num_visual_tokens']} (K is a run-time input)")
    for graph, a in (pr.get("auto_keep") or {}).items():
        print(f"            {graph}: K per image (--keep auto): {a['fraction']:g} of the score mass, K in [{a['k_min']}, "
              f"{a['k_max']}] ({a['source']})")
    for name, g in m["graphs"].items():
        def sig(vs):
            return ", ".join(f"{v['name']}{v['shape']}" for v in vs[:4]) + (f", ... ({len(vs)} in all)" if len(vs) > 4 else "")
        print(f"graph       {name}: {g['file']}\n              in:  {sig(g['inputs'])}\n              out: {sig(g['outputs'])}")
    print(f"prompt      {json.dumps(m['prompt']['template'])}")
    tower = m["graphs"]["vision"].get("tower")
    if tower:
        print(f"tower       {tower['type']}, saliency {tower['saliency']}; gate {m['graphs']['vision'].get('gate_position')}")
    layout = m.get("token_layout")
    if layout:
        print(f"layout      {layout['images']} image(s) x {layout['tiles']} view(s) x {layout['tokens_per_tile']} tokens at "
              f"{json.dumps(layout['placeholder'])}; kept: {layout['kept_policy']}; positions {m['positions']['scheme']}")
    print(f"files       {len(m['files'])}, {sum(f['bytes'] for f in m['files'].values()) / 1e6:.1f} MB, "
          f"{'sha256 verified' if not args.no_verify else 'not verified'}")
    return 0


def cmd_list(args) -> int:
    from atp.registry import ARCHITECTURES, BACKENDS, SCORERS

    from atp.registry import TOWERS

    print("architectures (config.json model_type -> adapter):")
    for name in ARCHITECTURES.names():
        a = ARCHITECTURES.get(name)
        print(f"  {name:<12} model_type {', '.join(a.model_types)}; gate {a.gate_position}; {a.summary}")
    print("vision towers (vision_config.model_type -> tower):")
    for name in TOWERS.names():
        t = TOWERS.get(name)
        print(f"  {name:<12} {', '.join(t.model_types)}; {'CLS token' if t.has_cls else 'no CLS token'}; "
              f"saliency {t.saliency_kind}")
    for reg in (SCORERS, BACKENDS):
        print(f"{reg.kind}s: {', '.join(reg.names())}")
    return 0
