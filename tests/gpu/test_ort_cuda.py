"""ORT CUDA backend against the CPU backend (runs only where CUDA and onnxruntime-gpu exist)."""

import pytest

from tests.conftest import random_image

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_session(tiny_bundle):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDAExecutionProvider (install 'atp-edge[gpu]' on a machine with an NVIDIA GPU)")
    from atp.runtime import Session

    return Session(tiny_bundle, backend="ort-cuda")


@pytest.mark.parametrize("keep", [1, 4, 16])
def test_cuda_matches_cpu(cuda_session, tiny_session, keep):
    img = random_image(keep)
    gpu = cuda_session.generate(img, "what colour is the circle", keep=keep, max_new_tokens=10)
    cpu = tiny_session.generate(img, "what colour is the circle", keep=keep, max_new_tokens=10)
    assert set(gpu.kept_index) == set(cpu.kept_index)
    assert gpu.token_ids == cpu.token_ids
