"""The bundle manifest schema: typed, versioned, one place (mirrored once in C++: runtime/cpp/src/bundle.cpp).

``manifest.json`` is written by the exporter and read by every runtime. :func:`parse` checks the parts a runtime
relies on (types, required keys, ranges) and returns a frozen :class:`Manifest`; anything wrong is a
:class:`~atp.errors.BundleError` that names the field. Sections a runtime does not read (validation reports, export
versions, graph details) stay in the raw dict (``Manifest.raw``).

Versions:
    1: LLaVA-1.5 bundles (one image, one contiguous run of K visual tokens, 1-D positions), implied.
    2: adds ``token_layout`` (how visual tokens are spliced into the prompt) and ``positions`` (the position rule),
       and ``source.architecture`` names the registered adapter. Version 1 bundles are read as the layout and
       positions they implied.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from atp.errors import BundleError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

#: Position schemes a decoder graph can take (``positions.scheme``).
POSITION_SCHEMES = {
    "1d": "position_ids [B, S] int64: 0..L-1 over the spliced prompt (visual tokens included), then one per new token",
    "mrope": "position_ids [3, B, S] int64 (t, h, w; Qwen2-VL M-RoPE, rotary frequencies split by positions.sections): "
             "text tokens take one position on all three axes, counting on from the token before; a kept visual "
             "token keeps its position in the full grid (start, start + row, start + col) whatever K is; the text "
             "after the image starts at start + max(rows, cols) as in the dense model; each new token takes the "
             "largest position so far + 1",
}

#: How an image becomes visual tokens (``token_layout.kind``).
LAYOUT_KINDS = {
    "fixed": "one fixed-size view: N tokens, one contiguous run at the placeholder",
    "anyres": "LLaVA-NeXT / OneVision anyres: base view + grid tiles (preprocessing.anyres); per image N = base P + "
              "unpadded grid tokens, resized when preprocessing.anyres.max_patches says so (the runtime computes "
              "token_index, and token_weight taps for max_patches); newline embedding after the last kept token of each "
              "grid row",
    "tiled": "Idefics3 / SmolVLM image splitting: rows x cols tiles then a global view (preprocessing.tiling); per "
             "image N = views x tokens_per_tile; each view's kept tokens follow its marker run (markers[RxC]), the "
             "last run follows the global view",
    "dynamic": "Qwen2-VL / Qwen2.5-VL dynamic resolution: one view resized to multiples of patch x merge within the "
               "pixel bounds (preprocessing.dynamic); per image N = rows x cols merged tokens; one contiguous run of "
               "kept tokens at the placeholder in raster order of the merged grid (tokens_per_tile: the largest N)",
}

#: Kept-token policies (``token_layout.kept_policy``).
KEPT_POLICIES = {
    "global_topk_ascending": "top-K over the image's N tokens (one score per token), kept in ascending (spatial) order",
}


@dataclass(frozen=True)
class TokenLayout:
    """How an image's visual tokens enter the prompt.

    Attributes:
        placeholder: The image placeholder text in the prompt template (``<image>``).
        placeholder_id: Its token id; it must occur ``images`` times in the tokenized prompt.
        images: Images per prompt this bundle supports.
        tiles: Views per image the vision graph encodes (1: one fixed-size view).
        tokens_per_tile: Visual tokens per view before pruning (N for one view).
        prefix_ids: Token ids placed before each image's visual tokens (wrapper / marker tokens; none for LLaVA).
        suffix_ids: Token ids placed after them.
        kept_policy: Which tokens the gate keeps (a key of :data:`KEPT_POLICIES`).
        kind: How an image becomes tokens (a key of :data:`LAYOUT_KINDS`); for ``anyres`` N varies per image and
            ``tiles x tokens_per_tile`` is its largest value.
        newline: Bundle file of the ``[D]`` row-newline embedding (``anyres``), or "".
        markers: ``tiled``: grid shape ``"RxC"`` -> the token ids of its marker runs (one more run than views: run v
            precedes view v's kept tokens, the last follows the global view's); empty otherwise.
    """

    placeholder: str
    placeholder_id: int
    images: int = 1
    tiles: int = 1
    tokens_per_tile: int = 0
    prefix_ids: tuple[int, ...] = ()
    suffix_ids: tuple[int, ...] = ()
    kept_policy: str = "global_topk_ascending"
    kind: str = "fixed"
    newline: str = ""
    markers: dict = field(default_factory=dict)

    @property
    def num_visual_tokens(self) -> int:
        """N: visual tokens of one image before pruning."""
        return self.tiles * self.tokens_per_tile

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prefix_ids"], d["suffix_ids"] = list(self.prefix_ids), list(self.suffix_ids)
        d["kept_policy_definition"] = KEPT_POLICIES[self.kept_policy]
        d["kind_definition"] = LAYOUT_KINDS[self.kind]
        return d


@dataclass(frozen=True)
class Positions:
    """The decoder's position rule (``positions``): a key of :data:`POSITION_SCHEMES`; ``sections`` (``mrope``): the
    rotary frequency pairs of the t, h and w axes (sum = head_dim / 2)."""

    scheme: str = "1d"
    sections: tuple[int, ...] = ()

    @property
    def axes(self) -> int:
        """Rows of ``position_ids``: 1 (``[B, S]``) or 3 (``[3, B, S]``)."""
        return 3 if self.scheme == "mrope" else 1

    def to_dict(self) -> dict:
        d = {"scheme": self.scheme, "rule": POSITION_SCHEMES[self.scheme]}
        if self.sections:
            d["sections"] = list(self.sections)
        return d


@dataclass(frozen=True)
class GraphInfo:
    """One ONNX graph of the bundle: file and I/O names (``graphs.<key>``)."""

    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    custom_ops_library: str = ""


@dataclass(frozen=True)
class Manifest:
    """The parts of ``manifest.json`` runtimes read, checked. ``raw`` is the whole JSON object."""

    format_version: int
    architecture: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    eos_token_ids: tuple[int, ...]
    graphs: dict[str, GraphInfo]
    num_visual_tokens: int
    default_keep: int
    scorers: dict[str, str]
    template: str
    token_layout: TokenLayout
    positions: Positions
    embeddings_file: str
    tokenizer_file: str
    max_sequence: int = 0  # limits.max_sequence: the LM's positions (prompt + answer); 0 = unlimited
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)


def _get(obj: Any, key: str, kind, where: str, default: Any = ...):
    if not isinstance(obj, dict):
        raise BundleError(f"manifest: {where} must be an object")
    if key not in obj or obj[key] is None:
        if default is ...:
            raise BundleError(f"manifest: {where}.{key} is missing; re-export the bundle")
        return default
    value = obj[key]
    ok = isinstance(value, kind) and not (kind in (int, (int, float)) and isinstance(value, bool))
    if not ok:
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise BundleError(f"manifest: {where}.{key} must be {name}, got {type(value).__name__}; re-export the bundle")
    return value


def _int(obj, key, where, lo: int = 0, default: Any = ...) -> int:
    v = _get(obj, key, int, where, default)
    if v < lo:
        raise BundleError(f"manifest: {where}.{key} = {v} must be >= {lo}")
    return v


def _ids(obj, key, where) -> tuple[int, ...]:
    v = _get(obj, key, list, where, [])
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v):
        raise BundleError(f"manifest: {where}.{key} must be a list of token ids")
    return tuple(v)


def _markers(t: dict) -> dict:
    markers = _get(t, "markers", dict, "token_layout", {})
    for key, runs in markers.items():
        if not isinstance(runs, list) or len(runs) < 2:
            raise BundleError(f"manifest: token_layout.markers[{key!r}] must be a list of marker runs")
        for run in runs:
            _ids({"run": run}, "run", f"token_layout.markers[{key!r}]")
    return markers


def _layout(m: dict, version: int, n: int) -> TokenLayout:
    prompt = _get(m, "prompt", dict, "manifest")
    placeholder = _get(prompt, "image_token", str, "prompt")
    placeholder_id = _int(prompt, "image_token_id", "prompt")
    if version < 2:  # LLaVA-1.5 bundles: one image, one contiguous run of N tokens
        return TokenLayout(placeholder, placeholder_id, tokens_per_tile=n)
    t = _get(m, "token_layout", dict, "manifest")
    layout = TokenLayout(
        placeholder=_get(t, "placeholder", str, "token_layout"), placeholder_id=_int(t, "placeholder_id", "token_layout"),
        images=_int(t, "images", "token_layout", lo=1), tiles=_int(t, "tiles", "token_layout", lo=1),
        tokens_per_tile=_int(t, "tokens_per_tile", "token_layout", lo=1), prefix_ids=_ids(t, "prefix_ids", "token_layout"),
        suffix_ids=_ids(t, "suffix_ids", "token_layout"), kept_policy=_get(t, "kept_policy", str, "token_layout"),
        kind=_get(t, "kind", str, "token_layout", "fixed"), newline=_get(t, "newline", str, "token_layout", ""),
        markers=_markers(t))
    if layout.kind not in LAYOUT_KINDS:
        raise BundleError(f"manifest: token_layout.kind {layout.kind!r} is not one this atp knows ({', '.join(LAYOUT_KINDS)})")
    if layout.kind == "tiled" and not layout.markers:
        raise BundleError("manifest: a tiled token_layout needs its marker runs (token_layout.markers)")
    if layout.kind == "anyres" and not layout.newline:
        raise BundleError("manifest: an anyres token_layout needs its newline embedding file (token_layout.newline)")
    if layout.kept_policy not in KEPT_POLICIES:
        raise BundleError(f"manifest: token_layout.kept_policy {layout.kept_policy!r} is not one this atp knows "
                          f"({', '.join(KEPT_POLICIES)}); use the atp release that wrote the bundle")
    if (layout.placeholder, layout.placeholder_id) != (placeholder, placeholder_id):
        raise BundleError("manifest: token_layout's placeholder differs from prompt.image_token / image_token_id")
    if layout.num_visual_tokens != n:
        raise BundleError(f"manifest: token_layout holds {layout.num_visual_tokens} visual tokens, "
                          f"pruning.num_visual_tokens says {n}")
    return layout


def _positions(m: dict, version: int) -> Positions:
    if version < 2:
        return Positions("1d")
    pos = _get(m, "positions", dict, "manifest")
    scheme = _get(pos, "scheme", str, "positions")
    if scheme not in POSITION_SCHEMES:
        raise BundleError(f"manifest: positions.scheme {scheme!r} is not one this atp runs ({', '.join(POSITION_SCHEMES)})")
    sections = _ids(pos, "sections", "positions")
    if scheme == "mrope" and (len(sections) != 3 or not all(sections)):
        raise BundleError("manifest: positions.sections must give the t, h and w rotary sections of an mrope scheme")
    return Positions(scheme, sections)


def _graphs(m: dict) -> dict[str, GraphInfo]:
    out = {}
    for key, g in _get(m, "graphs", dict, "manifest").items():
        where = f"graphs.{key}"
        names = []
        for part in ("inputs", "outputs"):
            io = _get(g, part, list, where)
            if not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in io):
                raise BundleError(f"manifest: {where}.{part} must be a list of objects with a name")
            names.append(tuple(i["name"] for i in io))
        ops = g.get("custom_ops")
        lib = ops.get("library", "") if isinstance(ops, dict) else ""
        out[key] = GraphInfo(_get(g, "file", str, where), names[0], names[1], str(lib))
    for need in ("vision", "decoder"):
        if need not in out:
            raise BundleError(f"manifest: graphs.{need} is missing; re-export the bundle")
    return out


MAX_SIDE = 8192  # the largest image side a manifest may ask preprocessing for (bounded memory)


def _check_preprocessing(m: dict) -> None:
    pre = _get(m, "preprocessing", dict, "manifest")
    size = _get(pre, "image_size", list, "preprocessing")
    sizes = {"image_size": size}
    for key in ("resize", "center_crop"):
        part = pre.get(key)
        if part is not None and not isinstance(part, dict):
            raise BundleError(f"manifest: preprocessing.{key} must be an object or null")
        sizes.update({f"{key}.{k}": v for k, v in (part or {}).items()})
    for name, v in sizes.items():
        values = v if isinstance(v, list) else [v]
        if not values or not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= MAX_SIDE for x in values):
            raise BundleError(f"manifest: preprocessing.{name} = {v!r} must be whole pixels in 1..{MAX_SIDE}")


def parse(m: Any) -> Manifest:
    """Check a manifest's JSON object and return the typed view (``format_version`` already read).

    Raises:
        BundleError: a required field is missing, of the wrong type or out of range (the message names it), or
            the format version is one this atp does not read.
    """
    if not isinstance(m, dict):
        raise BundleError("manifest: the top level must be a JSON object")
    version = m.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise BundleError(f"manifest format version {version!r}; this atp reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))}: re-export it with this atp, or use the atp release that wrote it")
    model = _get(m, "model", dict, "manifest")
    pruning = _get(m, "pruning", dict, "manifest")
    n = _int(pruning, "num_visual_tokens", "pruning", lo=1)
    default_keep = _int(pruning, "default_keep", "pruning", lo=1)
    if default_keep > n:
        raise BundleError(f"manifest: pruning.default_keep = {default_keep} exceeds num_visual_tokens = {n}")
    scorers = _get(pruning, "scorers", dict, "pruning", {})
    if not all(isinstance(v, str) for v in scorers.values()):
        raise BundleError("manifest: pruning.scorers must map scorer names to graph keys")
    eos = _ids(model, "eos_token_ids", "model")
    graphs = _graphs(m)
    _check_preprocessing(m)
    source = m.get("source") if isinstance(m.get("source"), dict) else {}
    return Manifest(
        format_version=version, architecture=str(source.get("architecture", "llava")),
        num_layers=_int(model, "num_layers", "model", lo=1), num_kv_heads=_int(model, "num_kv_heads", "model", lo=1),
        head_dim=_int(model, "head_dim", "model", lo=1), hidden_size=_int(model, "hidden_size", "model", lo=1),
        eos_token_ids=eos, graphs=graphs, num_visual_tokens=n, default_keep=default_keep, scorers=dict(scorers),
        template=_get(_get(m, "prompt", dict, "manifest"), "template", str, "prompt"),
        token_layout=_layout(m, version, n), positions=_positions(m, version),
        embeddings_file=_get(_get(m, "embeddings", dict, "manifest"), "file", str, "embeddings"),
        tokenizer_file=_get(_get(m, "tokenizer", dict, "manifest"), "file", str, "tokenizer"),
        max_sequence=_int(_get(m, "limits", dict, "manifest", {}), "max_sequence", "limits", default=0), raw=m)
