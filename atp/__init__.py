"""atp: prune visual tokens, quantize, and export vision-language models for edge GPUs.

The hub package imports no torch, ONNX Runtime or TensorRT: heavy parts live in
``atp.export``, ``atp.calibration``, ``atp.runtime`` and ``atp.plugins`` and are
imported only where used.
"""

__version__ = "0.1.0"

from atp.errors import AtpError  # noqa: E402

__all__ = ["AtpError", "__version__"]
