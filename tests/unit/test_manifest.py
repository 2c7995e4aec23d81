"""atp.manifest (the typed schema), atp.runtime.prompt (the splice) and atp.runtime.positions on their own:
wrong fields are named, version 1 bundles read as the layout they implied, and the splice plan on edge cases."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from atp.errors import BundleError, InputError
from atp.manifest import FORMAT_VERSION, Positions, TokenLayout, parse
from atp.runtime import positions
from atp.runtime.prompt import plan, splice, spliced_length, text_around_image

IMG = 9


def _manifest(version: int = FORMAT_VERSION) -> dict:
    io = {"inputs": [{"name": "x"}], "outputs": [{"name": "y"}]}
    m = {"format_version": version, "source": {"architecture": "llava"},
         "model": {"num_layers": 2, "num_kv_heads": 2, "head_dim": 16, "hidden_size": 64, "eos_token_ids": [2]},
         "graphs": {"vision": {"file": "vision.onnx", **io}, "decoder": {"file": "decoder.onnx", **io}},
         "pruning": {"num_visual_tokens": 16, "default_keep": 4, "scorers": {"cls": "vision"}},
         "prompt": {"template": "USER: <image>\n{prompt} ASSISTANT:", "image_token": "<image>", "image_token_id": IMG},
         "embeddings": {"file": "embed_tokens.npy"}, "tokenizer": {"file": "tokenizer/tokenizer.json"},
         "preprocessing": {"resize": {"shortest_edge": 32}, "center_crop": {"height": 32, "width": 32}, "image_size": [32, 32]}}
    if version >= 2:
        m["token_layout"] = TokenLayout("<image>", IMG, tokens_per_tile=16).to_dict()
        m["positions"] = Positions().to_dict()
    return m


def test_current_and_version_1_manifests_parse():
    spec = parse(_manifest())
    assert (spec.architecture, spec.num_visual_tokens, spec.default_keep) == ("llava", 16, 4)
    assert spec.graphs["decoder"].inputs == ("x",) and spec.token_layout.kept_policy == "global_topk_ascending"
    old = parse(_manifest(1))  # LLaVA-1.5 bundles: one image, one run of N tokens, 1-D positions
    assert old.token_layout == TokenLayout("<image>", IMG, tokens_per_tile=16) and old.positions == Positions("1d")


@pytest.mark.parametrize("edit,msg", [
    (lambda m: m.pop("graphs"), "graphs is missing"),
    (lambda m: m["graphs"].pop("decoder"), "graphs.decoder is missing"),
    (lambda m: m["model"].update(num_layers="2"), "model.num_layers must be int, got str"),
    (lambda m: m["model"].update(num_layers=True), "model.num_layers must be int, got bool"),
    (lambda m: m["pruning"].update(default_keep=999), "default_keep = 999 exceeds num_visual_tokens = 16"),
    (lambda m: m["pruning"].update(num_visual_tokens=0), "num_visual_tokens = 0 must be >= 1"),
    (lambda m: m["graphs"]["vision"].update(inputs=["x"]), "graphs.vision.inputs must be a list of objects"),
    (lambda m: m.update(prompt="x"), "manifest.prompt must be dict"),
    (lambda m: m["token_layout"].update(tokens_per_tile=8), "token_layout holds 8 visual tokens"),
    (lambda m: m["token_layout"].update(kept_policy="per_tile"), "kept_policy 'per_tile' is not one this atp knows"),
    (lambda m: m["token_layout"].update(placeholder_id=3), "placeholder differs"),
    (lambda m: m["positions"].update(scheme="alibi"), "positions.scheme 'alibi' is not one this atp runs"),
    (lambda m: m["positions"].update(scheme="mrope"), "positions.sections must give the t, h and w rotary sections"),
    (lambda m: m.pop("token_layout"), "token_layout is missing"),
    (lambda m: m.update(format_version=3), "format version 3"),
    (lambda m: m["model"].update(eos_token_ids=[-1]), "eos_token_ids must be a list of token ids"),
    (lambda m: m["preprocessing"]["resize"].update(shortest_edge=10**7), "shortest_edge = 10000000 must be whole pixels"),
    (lambda m: m["preprocessing"].update(image_size=[32, "x"]), "image_size"),
    (lambda m: m.pop("preprocessing"), "preprocessing is missing"),
])
def test_bad_fields_are_named(edit, msg):
    m = copy.deepcopy(_manifest())
    edit(m)
    with pytest.raises(BundleError, match=msg):
        parse(m)


def test_plan_and_splice():
    layout = TokenLayout("<image>", IMG, tokens_per_tile=3)
    ids = [1, 5, IMG, 6, 7]
    segs = plan(ids, layout)
    assert [(s.ids, s.image) for s in segs] == [((1, 5), None), ((), 0), ((6, 7), None)]
    assert spliced_length(segs, [2]) == 6 and text_around_image(segs) == ([1, 5], [6, 7])
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    image = np.full((2, 4), -1.0, np.float32)
    out = splice(segs, [image], table)
    np.testing.assert_array_equal(out[0], np.concatenate([table[[1, 5]], image, table[[6, 7]]]))
    # placeholder first or last; wrapper ids around the image
    assert [s.image for s in plan([IMG, 4], layout)] == [0, None]
    wrapped = TokenLayout("<image>", IMG, tokens_per_tile=3, prefix_ids=(3,), suffix_ids=(4,))
    assert [(s.ids, s.image) for s in plan([1, IMG], wrapped)] == [((1, 3), None), ((), 0), ((4,), None)]
    for bad in ([1, 2], [IMG, IMG]):
        with pytest.raises(InputError, match="exactly once"):
            plan(bad, layout)


def test_positions_1d():
    np.testing.assert_array_equal(positions.prefill(Positions(), 4), [[0, 1, 2, 3]])
    np.testing.assert_array_equal(positions.prefill(Positions(), 2, past=5), [[5, 6]])
    np.testing.assert_array_equal(positions.step(Positions(), 9), [[9]])
