"""Frozen, validated configuration objects serialised into bundle manifests."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from atp.errors import ConfigError

SUPPORTED_OPSETS = range(17, 22)


def _check_keep(keep: int | None, keep_ratio: float | None) -> None:
    if keep is not None and keep_ratio is not None:
        raise ConfigError("give either keep (K) or keep_ratio, not both")
    if keep is not None:
        if isinstance(keep, bool) or not isinstance(keep, int):
            raise ConfigError(f"keep must be an integer, got {keep!r}")
        if keep < 1:
            raise ConfigError(f"keep must be >= 1 visual token, got {keep}")
    if keep_ratio is not None:
        if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)):
            raise ConfigError(f"keep ratio must be a number in (0, 1], got {keep_ratio!r}")
        if not (0.0 < float(keep_ratio) <= 1.0) or math.isnan(keep_ratio):
            raise ConfigError(f"keep ratio must be in (0, 1], got {keep_ratio}")


def resolve_keep(num_tokens: int, keep: int | None = None, keep_ratio: float | None = None) -> int:
    """Turn a keep count or ratio into K for an image with ``num_tokens`` visual tokens.

    A ratio keeps ``ceil(ratio * N)`` tokens (at least 1). With neither given, all N are kept.

    Raises:
        ConfigError: K <= 0, K > N, ratio outside (0, 1], or both given.
    """
    _check_keep(keep, keep_ratio)
    if keep is not None:
        if keep > num_tokens:
            raise ConfigError(f"keep={keep} exceeds the {num_tokens} visual tokens of this model (1 <= K <= {num_tokens})")
        return keep
    if keep_ratio is not None:
        return max(1, math.ceil(float(keep_ratio) * num_tokens - 1e-9))
    return num_tokens


@dataclass(frozen=True)
class PruningConfig:
    """Which visual tokens the in-graph gate keeps by default.

    Attributes:
        scorer: Registered retention scorer name (``atp-export onnx --help`` lists them).
        keep: Default kept-token count K, ``"auto"`` (K per image in the graph, see
            :mod:`atp.calibration.auto_keep`), or None.
        keep_ratio: Default kept fraction in (0, 1], or None. With neither, all tokens are kept.
        extra_scorers: More scorers to export as alternative vision graphs (for eval and A/B tests).
    """

    scorer: str = "cls"
    keep: int | str | None = None
    keep_ratio: float | None = None
    extra_scorers: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.scorer, str) or not self.scorer:
            raise ConfigError("scorer must be a non-empty name")
        object.__setattr__(self, "extra_scorers", tuple(self.extra_scorers))
        if len(set(self.scorers)) != len(self.scorers):
            raise ConfigError(f"scorers listed twice: {', '.join(self.scorers)}")
        if self.keep == "auto":
            if self.keep_ratio is not None:
                raise ConfigError("give either keep 'auto' or keep_ratio, not both")
        else:
            _check_keep(self.keep, self.keep_ratio)

    @property
    def auto_keep(self) -> bool:
        """True for ``keep="auto"``: the vision graphs pick K per image."""
        return self.keep == "auto"

    @property
    def scorers(self) -> tuple[str, ...]:
        """The default scorer first, then the extras."""
        return (self.scorer, *self.extra_scorers)

    def to_dict(self) -> dict:
        return asdict(self)


WEIGHT_PRECISIONS = ("fp32", "fp16", "int8", "int4", "mixed")
VISION_PRECISIONS = ("fp32", "int8", "int8-blocks")
PREFILL_PRECISIONS = ("same", "int8")
KV_PRECISIONS = ("float32", "int8")
QUANT_TARGETS = ("ort", "qdq")
DECODER_GRAPHS = ("traced", "fused")


@dataclass(frozen=True)
class QuantConfig:
    """Decoder weight and KV-cache precision.

    Attributes:
        weights: ``fp32``, ``fp16`` (storage), ``int8`` (per output feature), ``int4`` (group-wise
            round to nearest) or ``mixed`` (int8/int4 per output feature from a calibration artifact).
        group_size: int4 group size along the input features (16..256, power of two, dividing them).
        symmetric: int4 symmetric (no zero points) or asymmetric.
        kv: KV-cache dtype: ``float32`` or ``int8`` (dynamic, per token and head).
        calibration: Calibration artifact directory (required for ``mixed``).
        target: ``ort`` (MatMulNBits) or ``qdq`` (standard DequantizeLinear, for TensorRT).
        decoder_graph: ``traced`` (``torch.onnx.export`` of the decoder: plain ONNX) or ``fused`` (built
            with ONNX Runtime's GroupQueryAttention / SkipSimplifiedLayerNormalization and q/k/v, gate/up
            fused GEMMs: ~12x fewer nodes, the fast decode path on ORT CPU; ``ort`` target and float32 KV only).
        prefill: ``same`` (the decoder graph runs the prompt too) or ``int8``: a second decoder graph for the prompt
            (W8A8: int8 weights per output feature, uint8 activations per tensor, ONNX Runtime's DynamicQuantizeMatMul,
            the compute-bound form), writing the same KV cache the decoder graph then decodes from.
        vision: Vision graph (tower + projector linears) weights: ``fp32``; ``int8`` (W8A8: int8 weights per output
            feature, uint8 activations per tensor at run time; ONNX Runtime's DynamicQuantizeMatMul, the fast CPU
            form); or ``int8-blocks`` (MatMulNBits bits=8 with int8 activations per block of 32). The gate's score
            path stays fp32.
    """

    weights: str = "fp32"
    group_size: int = 32
    symmetric: bool = True
    kv: str = "float32"
    calibration: str | None = None
    target: str = "ort"
    decoder_graph: str = "traced"
    vision: str = "fp32"
    prefill: str = "same"

    def __post_init__(self):
        if self.weights not in WEIGHT_PRECISIONS:
            raise ConfigError(f"weights must be one of {', '.join(WEIGHT_PRECISIONS)}, got {self.weights!r}")
        if self.kv not in KV_PRECISIONS:
            raise ConfigError(f"kv cache precision must be one of {', '.join(KV_PRECISIONS)}, got {self.kv!r}")
        if self.target not in QUANT_TARGETS:
            raise ConfigError(f"quantization target must be one of {', '.join(QUANT_TARGETS)}, got {self.target!r}")
        if isinstance(self.group_size, bool) or self.group_size not in (16, 32, 64, 128, 256):
            raise ConfigError(f"int4 group size must be a power of two in 16..256, got {self.group_size!r}")
        if self.weights == "mixed" and not self.calibration:
            raise ConfigError("mixed weights need a calibration artifact: atp-export calibrate ... --bits B, then --calibration DIR")
        if self.vision not in VISION_PRECISIONS:
            raise ConfigError(f"vision graph weights must be one of {', '.join(VISION_PRECISIONS)}, got {self.vision!r}")
        if self.vision != "fp32" and self.target != "ort":
            raise ConfigError("int8 vision weights are written for ONNX Runtime (DynamicQuantizeMatMul / MatMulNBits): "
                              "use --quant-target ort")
        if self.decoder_graph not in DECODER_GRAPHS:
            raise ConfigError(f"decoder graph must be one of {', '.join(DECODER_GRAPHS)}, got {self.decoder_graph!r}")
        if self.prefill not in PREFILL_PRECISIONS:
            raise ConfigError(f"prefill weights must be one of {', '.join(PREFILL_PRECISIONS)}, got {self.prefill!r}")
        if self.prefill != "same" and (self.target != "ort" or self.kv != "float32"):
            raise ConfigError("an int8 prefill graph (ONNX Runtime DynamicQuantizeMatMul) needs --quant-target ort and "
                              "--kv-cache float32")
        if self.decoder_graph == "fused" and (self.target != "ort" or self.kv != "float32"):
            raise ConfigError("the fused decoder graph (ONNX Runtime contrib ops) needs --quant-target ort and --kv-cache float32")
        if self.target == "qdq" and self.weights in ("int4", "mixed") and not self.symmetric:
            raise ConfigError("the TensorRT (qdq) target takes symmetric int4 only; drop --asymmetric")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ExportConfig:
    """How a checkpoint is turned into graphs.

    Attributes:
        opset: ONNX opset of the exported graphs.
        pruning: Default token pruning recorded in the manifest.
        external_data_threshold: Graphs whose weights exceed this many bytes store them in a
            side file (protobuf cannot hold more than 2 GB).
        quantization: Decoder weight and KV-cache precision.
    """

    opset: int = 21
    pruning: PruningConfig = PruningConfig()
    external_data_threshold: int = 1_800_000_000
    quantization: QuantConfig = QuantConfig()

    def __post_init__(self):
        if self.opset not in SUPPORTED_OPSETS:
            raise ConfigError(
                f"opset {self.opset} is not supported; use one of {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}"
            )
        if self.external_data_threshold <= 0:
            raise ConfigError("external_data_threshold must be positive")

    def to_dict(self) -> dict:
        return asdict(self)
