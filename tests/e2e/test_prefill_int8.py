"""--prefill-weights int8: the prompt runs on a W8A8 prefill graph, decode steps on the decoder graph over the KV cache
it wrote. Checked against PyTorch: the prefill graph against a fake-quant reference of the same arithmetic (logits within
1e-4 + 2% of their scale, as the exporter's validation), and greedy ids against a PyTorch loop that prefills with the
fake-quant decoder and decodes with the fp32 one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atp.config import ExportConfig, QuantConfig
from tests.conftest import random_image


@pytest.fixture(scope="module")
def prefill_bundle(tiny_ckpt, tmp_path_factory):
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle

    adapter = adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt)
    out = tmp_path_factory.mktemp("pf") / "fp32-prefill-int8"
    manifest = export_bundle(adapter, out, ExportConfig(quantization=QuantConfig(prefill="int8")))
    return adapter, out, manifest


def test_manifest_and_validation(prefill_bundle):
    _, out, m = prefill_bundle
    g = m["graphs"]["decoder_prefill"]
    assert g["weights"]["precision"] == "int8-dynamic" and g["weights"]["quantized_layers"] == 2 * 7 + 1  # 7 per layer + lm_head
    assert [i["name"] for i in g["inputs"]] == [i["name"] for i in m["graphs"]["decoder"]["inputs"]]
    v = m["validation"]["decoder_prefill"]
    assert v["same_argmax"] and v["logits_max_abs_diff"] <= 1e-4 + 0.02 * v["logits_scale"]
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / g["file"]), load_external_data=False).graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops


def test_greedy_ids_equal_the_pytorch_prefill_then_decode_loop(prefill_bundle):
    from atp.calibration.salience import decoder_linears
    from atp.export.quantize_vision import fake_quant_vision
    from atp.runtime import Session

    adapter, out, m = prefill_bundle
    session = Session(out)
    assert session.prefill_graph == "decoder_prefill"
    fp32 = adapter.decoder_module()
    q8 = fake_quant_vision(fp32, m["graphs"]["decoder_prefill"]["weights"]["quantized"], "int8", linears_of=decoder_linears)
    table = torch.from_numpy(np.array(session.embeddings, np.float32))
    for seed in range(3):
        img, prompt = random_image(seed), "what colour is the circle"
        ours = session.generate(img, prompt, max_new_tokens=8, ignore_eos=True)
        seq = torch.from_numpy(session.inputs_embeds(session.prompt_ids(prompt), session.image_tokens(img, None, None, prompt)["embeds"]))
        n = seq.shape[1]
        kv = [torch.zeros(1, m["model"]["num_kv_heads"], 0, m["model"]["head_dim"]) for _ in range(2 * m["model"]["num_layers"])]
        with torch.no_grad():
            logits, *kv = q8(seq, torch.ones(1, n, dtype=torch.int64), torch.arange(n)[None], *kv)
            ref = []
            for j in range(8):
                ref.append(int(logits[0, -1].argmax()))
                logits, *kv = fp32(table[ref[-1]][None, None], torch.ones(1, n + j + 1, dtype=torch.int64),
                                   torch.tensor([[n + j]]), *kv)
        assert ours.token_ids == ref, seed
