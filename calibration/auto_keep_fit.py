"""Fitting ``--keep auto`` during ``atp-export calibrate`` and reading the fit back for export.

After the blend weights are fitted (:mod:`atp.calibration.calibrate`), a second pass over the calibration
samples records, for each scorer's calibrated setting, K_mass at every score-mass fraction
(:mod:`atp.calibration.auto_keep`) and the answers at those K that the keep-ratio grid has not measured;
:func:`fit_auto_keep` then picks per budget the (fraction, k_min, k_max) with the smallest mean K whose answers
agree with the dense ones on at least the budget's share of samples.
"""

from __future__ import annotations

import numpy as np
import torch

from atp.calibration.artifact import CalibrationArtifact
from atp.calibration.auto_keep import NORMALISATION, AutoKeep
from atp.calibration.calibrate import RetentionCalibConfig, TorchVlm, _sample_context, _score, setting_key
from atp.errors import CalibrationError


def sample_auto_keep(vlm: TorchVlm, chosen: dict, sample, ks: dict, fractions, max_new_tokens: int) -> dict:
    """K_mass per fraction of each scorer's calibrated setting on one sample, and the answers at those K
    that the keep-ratio grid has not measured already."""
    from atp.calibration.auto_keep import mass_counts
    from atp.export.gate import topk_ascending

    n = max(ks.values())
    known = set(ks.values())
    with torch.no_grad():
        ctx, ids, projected, texts = _sample_context(vlm, sample, n)
        kmass, need = {}, {}
        for name, scorer in chosen.items():
            scores = _score(ctx, scorer, texts)
            kmass[name] = {f"{f:g}": int(mass_counts(scores, f)[0]) for f in fractions}
            for k in set(kmass[name].values()) - known:
                need.setdefault(k, {})[name] = tuple(topk_ascending(scores, torch.tensor(k))[0].tolist())
        answers: dict[str, dict[str, list]] = {name: {} for name in chosen}
        for k, sets in sorted(need.items()):
            unique = sorted(set(sets.values()))
            got = dict(zip(unique, vlm.answers(ids, projected[torch.tensor(unique)], max_new_tokens)))
            for name, st in sets.items():
                answers[name][str(k)] = list(got[st])
    return {"kmass": kmass, "answers": answers}


def fit_auto_keep(cfg: RetentionCalibConfig, section: dict, records: list[dict], auto_records: list[dict], ks: dict) -> dict:
    """Add ``auto_keep`` per budget to each calibrated scorer of ``section``; returns the grids as tensors.

    For every score-mass fraction and every (k_min <= k_max) pair from the keep-ratio grid's K values,
    each sample keeps ``clamp(K_mass, k_min, k_max)`` tokens; per budget the choice is the smallest mean K
    whose agreement with the dense answers reaches the budget (k_min = N, i.e. dense, always does).
    """
    k_ratio: dict[int, float] = {}
    for r, k in sorted(ks.items(), reverse=True):
        k_ratio.setdefault(k, r)
    cands = sorted(k_ratio)
    n = max(ks.values())
    dense = [rec["dense"] for rec in records]
    tensors = {}
    for name in auto_records[0]["kmass"] if auto_records else []:
        key = setting_key(name, section["scorers"][name]["params"])

        def answer(i, k, key=key, name=name):
            if k in k_ratio:
                return records[i]["answers"][key][str(k_ratio[k])]
            return auto_records[i]["answers"][name][str(k)]

        shape = (len(cfg.fractions), len(cands), len(cands))
        agree, mean_k = np.full(shape, np.nan), np.full(shape, np.nan)
        for fi, f in enumerate(cfg.fractions):
            kmass = [rec["kmass"][name][f"{f:g}"] for rec in auto_records]
            for a, lo in enumerate(cands):
                for b, hi in enumerate(cands[a:], start=a):
                    kk = [min(max(km, lo), hi) for km in kmass]
                    agree[fi, a, b] = np.mean([answer(i, k) == dense[i] for i, k in enumerate(kk)])
                    mean_k[fi, a, b] = np.mean(kk)
        choice = {}
        for budget in cfg.budgets:
            best = None
            for fi, a, b in zip(*np.nonzero(agree + 1e-12 >= budget)):
                rank = (mean_k[fi, a, b], -agree[fi, a, b], -cfg.fractions[fi], cands[b], cands[a])
                if best is None or rank < best[0]:
                    best = (rank, fi, a, b)
            _, fi, a, b = best
            choice[f"{budget:g}"] = {"fraction": cfg.fractions[fi], "k_min": cands[a], "k_max": cands[b],
                                     "agreement": float(agree[fi, a, b]), "mean_k": float(mean_k[fi, a, b]),
                                     "mean_keep_ratio": float(mean_k[fi, a, b] / n)}
        section["scorers"][name]["auto_keep"] = choice
        tensors[f"{name}.auto_agreement"] = agree.astype(np.float32)
        tensors[f"{name}.auto_mean_k"] = mean_k.astype(np.float32)
    section["auto_keep"] = {
        "normalisation": NORMALISATION, "fractions": list(cfg.fractions), "k_candidates": cands,
        "method": "per budget: smallest mean K over (fraction, k_min <= k_max) whose agreement with the dense answers "
                  "reaches the budget, with the scorer's calibrated parameters",
        "tensors": "retention.safetensors: <scorer>.auto_agreement / auto_mean_k [fraction, k_min, k_max] (NaN: k_min > k_max)",
        "scorers": sorted(auto_records[0]["kmass"]) if auto_records else []}
    return tensors



def auto_keep_from(artifact, scorers, budget: str | None = None) -> dict[str, AutoKeep]:
    """``scorer -> AutoKeep`` from an artifact's retention section, at ``budget`` (default: the strictest).

    Scorers the artifact has no ``auto_keep`` for get :meth:`AutoKeep.defaults`, with a source saying so.
    """
    art = artifact if isinstance(artifact, CalibrationArtifact) else CalibrationArtifact.load(artifact)
    sec = art.section("retention") or {}
    n = sec.get("num_visual_tokens")
    out = {}
    for name in scorers:
        fits = ((sec.get("scorers") or {}).get(name) or {}).get("auto_keep") or {}
        if fits:
            b = budget if budget is not None else max(fits, key=float)
            if b not in fits:
                raise CalibrationError(f"the artifact has no auto keep for budget {b} of {name} (it has {', '.join(fits)})")
            f = fits[b]
            out[name] = AutoKeep(f["fraction"], f["k_min"], f["k_max"],
                                 source=f"calibration artifact (budget {b}: agreement {f['agreement']:.3f} at mean K "
                                        f"{f['mean_k']:.1f} on {sec.get('n_samples')} {sec.get('data')} samples)")
        elif n:
            out[name] = AutoKeep.defaults(int(n), source="defaults (the calibration artifact has no auto keep for this scorer)")
    return out
