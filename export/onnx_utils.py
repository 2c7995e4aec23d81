"""Helpers around torch.onnx.export and ONNX graph inspection."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

log = logging.getLogger(__name__)

_DTYPES = {v: k for k, v in onnx.TensorProto.DataType.items()}


def export_module(
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
    external_data_threshold: int,
    fixed_output_dims: dict[str, dict[int, int]] | None = None,
) -> onnx.ModelProto:
    """Trace ``module`` to ONNX at ``path`` (TorchScript-based exporter: fast, and honours
    the custom ``symbolic`` of the gate). Weights go to ``<name>.data`` when their total
    exceeds ``external_data_threshold`` bytes. ``fixed_output_dims`` pins output dims the
    tracer left symbolic but that are constant (e.g. the last-position logits length 1).

    Returns:
        The saved model without weights loaded (for inspection).
    """
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / path.name
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shape-to-int conversions we keep dynamic
            torch.onnx.export(
                module,
                args,
                str(raw),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        model = onnx.load(str(raw), load_external_data=True)
    for out in model.graph.output:
        for axis, value in (fixed_output_dims or {}).get(out.name, {}).items():
            out.type.tensor_type.shape.dim[axis].dim_value = value
    weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    external = weight_bytes > external_data_threshold
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=f"{path.name}.data",
        size_threshold=1024,
    )
    onnx.checker.check_model(str(path))
    log.info("wrote %s (%.1f MB of weights%s)", path.name, weight_bytes / 1e6, ", external data" if external else "")
    return onnx.load(str(path), load_external_data=False)


def describe_io(model: onnx.ModelProto) -> dict:
    """Inputs and outputs of a graph with dtypes and shapes read from the graph itself
    (symbolic dims as names, fixed dims as ints)."""

    def values(vs):
        out = []
        for v in vs:
            tt = v.type.tensor_type
            dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None) for d in tt.shape.dim]
            out.append({"name": v.name, "dtype": _DTYPES.get(tt.elem_type, str(tt.elem_type)).lower(), "shape": dims})
        return out

    inits = {i.name for i in model.graph.initializer}
    return {"inputs": values(v for v in model.graph.input if v.name not in inits), "outputs": values(model.graph.output)}


def external_files(path: Path) -> list[str]:
    """Names of external-data files a saved graph refers to."""
    model = onnx.load(str(path), load_external_data=False)
    names = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            names.update(e.value for e in t.external_data if e.key == "location")
    return sorted(names)
