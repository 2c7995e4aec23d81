"""Choosing a bundle's TensorRT engine for a device, and checking requests against its profiles.

Pure manifest logic (no TensorRT import), shared by the runtime backends: the errors a device
sees when the bundle's engines do not fit it say what was built and what to run instead.
"""

from __future__ import annotations

from atp.errors import BundleError, InputError


def _sm(cc: int) -> str:
    return f"sm_{cc}"


def engine_for_device(manifest: dict, compute_capability: int, target: str | None = None) -> tuple[str, dict]:
    """The ``(target, engines entry)`` whose engines run on a GPU of ``compute_capability`` (major*10+minor).

    Args:
        manifest: A bundle manifest.
        compute_capability: e.g. 87 for Jetson Orin.
        target: Use this target's engines (still checked against the device).

    Raises:
        BundleError: the bundle has no engines, no engines for ``target``, or none built for this GPU.
    """
    engines = manifest.get("engines") or {}
    if not engines:
        raise BundleError("this bundle has no TensorRT engines; build them with `atp-export engine BUNDLE --target ...`")
    if target is not None and target not in engines:
        raise BundleError(f"this bundle has no engines for target {target!r} (it has: {', '.join(engines)}); "
                          f"build them with `atp-export engine BUNDLE --target {target}`")
    candidates = {target: engines[target]} if target else engines
    here = _sm(compute_capability)
    for name, entry in candidates.items():
        if here in entry.get("compute_capabilities", []):
            return name, entry
    built = "; ".join(f"{n}: {', '.join(e.get('compute_capabilities', []))}" for n, e in candidates.items())
    raise BundleError(f"the bundle's engines were built for another GPU ({built}) and this GPU is {here}; TensorRT engines "
                      f"only run on the compute capability they were built for: run `atp-export engine BUNDLE --target ...` "
                      f"for {here} (on the device itself for sm_87 Jetson Orin)")


def check_keep(entry: dict, graph: str, keep: int) -> None:
    """Refuse a keep count outside the engine's profile for ``graph`` (e.g. ``vision``).

    Raises:
        InputError: K outside ``[min, max]`` of every profile of that engine.
    """
    g = entry.get("graphs", {}).get(graph)
    if g is None:
        raise BundleError(f"the engines have no {graph!r} graph (built: {', '.join(entry.get('graphs', {}))})")
    ranges = [(p["values"]["keep"]["min"][0], p["values"]["keep"]["max"][0]) for p in g["profiles"] if "keep" in p.get("values", {})]
    if not ranges:
        return
    if not any(lo <= keep <= hi for lo, hi in ranges):
        spans = ", ".join(f"{lo}..{hi}" for lo, hi in ranges)
        raise InputError(f"keep={keep} is outside the {graph} engine's profile (K in {spans}); choose K in that range "
                         f"or rebuild the engines")
