"""Calibration in the bundle's text space: with an open_clip model (tiny random weights, real open_clip code) ``atp``'s
alpha is fitted on CLIP-space relevance, the token sets calibration measures are the ones the exported CLIP bundle keeps,
and export refuses an artifact fitted in the other space."""

import pytest

pytest.importorskip("open_clip", reason="the clip extra (open_clip) is not installed")

from tests.e2e.test_clip_text import tiny_open_clip  # noqa: E402

K = 4


@pytest.fixture(scope="module")
def clip_calibrated(tiny_ckpt, tmp_path_factory):
    from atp.calibration.calibrate import RetentionCalibConfig, run_calibrate
    from atp.export.adapters import adapter_for_checkpoint

    clip = tiny_open_clip(patch=16, image_size=48)
    adapter = adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt)
    cfg = RetentionCalibConfig(data="multi-object", limit=4, scorers=("atp", "cls"), keep_ratios=(1.0, 0.25), auto_keep=False)
    art = run_calibrate(adapter, cfg, tmp_path_factory.mktemp("clipcal") / "art", progress=False, clip=clip)
    return adapter, clip, art


def test_artifact_records_the_clip_space(clip_calibrated):
    _, clip, art = clip_calibrated
    sec = art.section("retention")
    assert sec["text_space"] == {"atp": "clip"} and sec["clip_model"] == clip.name


def test_calibration_measures_what_the_clip_bundle_keeps(clip_calibrated, tmp_path):
    import torch

    from atp.calibration.calibrate import TorchVlm, _sample_context, _score, calibration_samples, scorer_params_from
    from atp.config import ExportConfig, PruningConfig
    from atp.export.exporter import export_bundle
    from atp.export.gate import topk_ascending
    from atp.runtime import Session

    adapter, clip, art = clip_calibrated
    params = scorer_params_from(art)
    export_bundle(adapter, tmp_path / "b", ExportConfig(pruning=PruningConfig(scorer="atp")), scorer_params=params, clip=clip)
    s = Session(tmp_path / "b")
    assert s.manifest["pruning"]["scorer_params"]["atp"] == {**params["atp"], "text_space": "clip"}
    vlm, lm_vlm = TorchVlm(adapter, clip), TorchVlm(adapter)
    differs = 0
    for sample in calibration_samples("multi-object", 4):
        with torch.no_grad():
            ctx, _, _, texts = _sample_context(vlm, sample, 16)
            ours = topk_ascending(_score(ctx, vlm.make_scorer("atp", params["atp"]), texts), torch.tensor(K))[0].tolist()
            ctx, _, _, texts = _sample_context(lm_vlm, sample, 16)
            lm = topk_ascending(_score(ctx, lm_vlm.make_scorer("atp", params["atp"]), texts), torch.tensor(K))[0].tolist()
        assert ours == s.generate(sample.image, sample.question, keep=K, scorer="atp", max_new_tokens=1).kept_index
        differs += ours != lm
    if params["atp"]["alpha"] < 1.0:  # alpha 1 ignores the text: both spaces then keep the same tokens
        assert differs > 0, "CLIP and LM space kept the same tokens on every sample: the test could not tell them apart"


def test_export_refuses_an_artifact_from_the_other_space(clip_calibrated, tmp_path):
    from atp.calibration.artifact import CalibrationArtifact
    from atp.calibration.calibrate import check_text_space
    from atp.errors import CalibrationError

    _, clip, art = clip_calibrated
    with pytest.raises(CalibrationError, match="CLIP space, but this bundle measures it in LM space"):
        check_text_space(art, ["atp"], clip=None)
    check_text_space(art, ["atp", "cls"], clip=clip)
    check_text_space(art, ["cls"], clip=None)  # cls reads no text
    lm_art = CalibrationArtifact(art.fingerprint, "x", {"retention": {"scorers": {"atp": {"params": {"alpha": 0.5}}}}})
    with pytest.raises(CalibrationError, match="LM space, but this bundle measures it in CLIP space"):
        check_text_space(lm_art, ["atp"], clip=clip)  # an artifact without a text_space record was fitted in LM space
