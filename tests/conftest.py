"""Shared fixtures: tiny seeded LLaVA checkpoints and their exported bundles (built once per session)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Triton kernels run in the interpreter on the CPU; set before anything imports triton (transformers does).
# tests/gpu launches the AOT cubins through the driver API, or Triton in a subprocess with this unset.
os.environ.setdefault("TRITON_INTERPRET", "1")
# The ort backend swaps int4 MatMulNBits for atp's MatMulInt4 when a build sits in the user cache; tests must
# not depend on that cache, so they opt in explicitly (tests/unit/test_ort_cpu_kernels.py, tests/e2e/test_ort_cpu_runtime.py).
os.environ.setdefault("ATP_ORT_CPU_KERNELS", "off")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from tests.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("ckpt") / "tiny-llava")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_ckpt, tmp_path_factory):
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt), out)
    return out


@pytest.fixture(scope="session")
def hf_tiny(tiny_ckpt):
    """(model, processor) of the tiny checkpoint in transformers, fp32 eval."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(tiny_ckpt).eval(), AutoProcessor.from_pretrained(tiny_ckpt)


@pytest.fixture(scope="session")
def tiny_session(tiny_bundle):
    from atp.runtime import Session

    return Session(tiny_bundle)


def random_image(seed: int, size=(32, 32)):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))
