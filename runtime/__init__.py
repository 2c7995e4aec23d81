"""atp.runtime: run bundles without torch (ONNX Runtime by default).

>>> from atp.runtime import Session                      # doctest: +SKIP
>>> s = Session("build/demo")                             # doctest: +SKIP
>>> s.generate("assets/demo.png", "What is in the image?", keep_ratio=0.25).text  # doctest: +SKIP
"""

from atp.runtime.session import GenerationResult, Session

__all__ = ["GenerationResult", "Session"]
