"""``atp-export calibrate``: fit the retention scorers' blend weights and recommend keep ratios.

On calibration image + prompt pairs (never a test split), the model answers every question with
all visual tokens (the dense answer) and again with K tokens kept by each candidate scorer
setting, in PyTorch (the same vision gate the bundle exports, the language model greedy).
For each scorer, the grid point (e.g. ``atp``'s ``alpha``, ``qat``'s three term weights) with the
highest mean agreement with the dense answers over the keep ratios below 1 is chosen; then, per
accuracy budget (e.g. 0.99), the smallest keep ratio from which on (it and every larger ratio)
the chosen setting matches the dense answer on at least that fraction of samples.

The result goes into the ``retention`` section of a :class:`CalibrationArtifact`; the agreement
curves of every grid point go into ``retention.safetensors``. Progress is appended to
``<out>.partial/`` per sample, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from atp import datasets
from atp.calibration.artifact import CalibrationArtifact, adapter_fingerprint
from atp.calibration.auto_keep import FRACTIONS as AUTO_FRACTIONS
from atp.config import resolve_keep
from atp.errors import CalibrationError, ConfigError
from atp.registry import SCORERS

log = logging.getLogger(__name__)

DEFAULT_RATIOS = (1.0, 0.75, 0.5, 0.375, 0.25, 0.125, 0.0625)
DEFAULT_BUDGETS = (0.99, 0.95)
DEFAULT_SCORERS = ("cls", "atp", "qat")
EASY_VQA_CALIB_SEED = 2_000_029  # synthetic easy-VQA images: easy-vqa ships only train and test


def _simplex(step: float) -> list[tuple[float, float, float]]:
    n = round(1 / step)
    return [(i / n, j / n, (n - i - j) / n) for i in range(n + 1) for j in range(n + 1 - i)]


#: Grid of constructor arguments searched per scorer (the scorer's default first, so ties keep it).
PARAM_GRIDS: dict[str, list[dict]] = {
    "atp": [{"alpha": a} for a in (0.5, 0.0, 0.25, 0.75, 1.0)],
    "qat": [{"weights": [-0.25, 0.25, 0.5]}] + [{"weights": list(w)} for w in _simplex(0.25)]  # default first
    + [{"weights": w} for w in ([-0.5, 0.0, 0.5], [-0.25, 0.0, 0.75], [-0.25, 0.5, 0.25], [-0.125, 0.125, 0.75])],
    # negative error weight: prefer the tokens the quantized model reproduces faithfully
    "idp": [{"lam": lam} for lam in (0.6, 0.2, 0.4, 0.8, 1.0)],
}


@dataclass(frozen=True)
class RetentionCalibConfig:
    """What ``calibrate`` searches.

    Attributes:
        data: ``easy-vqa``, ``multi-object`` or a VQA folder (its calibration part only).
        limit: Number of calibration questions (seeded subset).
        scorers: Scorers to calibrate (each gets its grid from :data:`PARAM_GRIDS`, else its defaults).
        keep_ratios: Keep ratios measured; 1.0 is the dense reference.
        budgets: Agreement levels for the recommended keep ratios.
        max_new_tokens: Greedy answer length compared with the dense answer.
        auto_keep: Also fit ``--keep auto`` (score-mass fraction, k_min, k_max) per scorer that supports it.
        fractions: Score-mass fractions searched for ``--keep auto``.
    """

    data: str
    limit: int | None = 200
    scorers: tuple[str, ...] = DEFAULT_SCORERS
    keep_ratios: tuple[float, ...] = DEFAULT_RATIOS
    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    max_new_tokens: int = 4
    grids: dict = field(default_factory=lambda: {k: list(v) for k, v in PARAM_GRIDS.items()})
    auto_keep: bool = True
    fractions: tuple[float, ...] = AUTO_FRACTIONS

    def __post_init__(self):
        object.__setattr__(self, "scorers", tuple(self.scorers))
        object.__setattr__(self, "keep_ratios", tuple(sorted({float(r) for r in self.keep_ratios} | {1.0}, reverse=True)))
        object.__setattr__(self, "budgets", tuple(sorted({float(b) for b in self.budgets}, reverse=True)))
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        for r in self.keep_ratios:
            resolve_keep(1, keep_ratio=r)
        for b in self.budgets:
            if not 0.0 < b <= 1.0:
                raise ConfigError(f"accuracy budgets must be in (0, 1], got {b}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        for name in self.scorers:
            if SCORERS.get(name).merges_tokens:
                raise ConfigError(f"scorer {name!r} merges tokens; calibration measures kept token subsets: leave it out")
        object.__setattr__(self, "fractions", tuple(sorted({float(f) for f in self.fractions})))
        for f in self.fractions:
            if not 0.0 < f <= 1.0:
                raise ConfigError(f"auto keep fractions must be in (0, 1], got {f}")

    def settings(self) -> list[tuple[str, dict]]:
        """(scorer, constructor kwargs) for every grid point, in search order."""
        return [(name, dict(p)) for name in self.scorers for p in self.grids.get(name, [{}])]


def setting_key(name: str, params: dict) -> str:
    return f"{name}:{json.dumps(params, sort_keys=True)}"


def calibration_samples(data: str, limit: int | None, seed: int = 0) -> list[datasets.VqaSample]:
    """Calibration questions: the ``calib`` split of multi-object, fresh synthetic easy-VQA images
    (easy-vqa has no calib split and its test split stays held out), or every question of a folder."""
    if data == "multi-object":
        n_images = 1000 if not limit else max(20, math.ceil(limit / 2))
        samples = datasets.multi_object("calib", n_images)
    elif data == "easy-vqa":
        rng = np.random.default_rng(EASY_VQA_CALIB_SEED)
        n_images = 500 if not limit else max(10, math.ceil(limit / 4))
        samples = []
        for i in range(n_images):
            img, qas = datasets.synthetic_easy_vqa(rng, n_questions=4)
            samples += [datasets.VqaSample(q, a, f"calib/{i}", image=img) for q, a in qas]
    elif Path(data).is_dir():
        samples = datasets.vqa_dir(data)
    else:
        raise ConfigError(f"unknown calibration data {data!r}: use easy-vqa, multi-object or a folder with questions.json")
    return datasets.subsample(samples, limit, seed=seed)


class TorchVlm:
    """The adapter's model in PyTorch, answering like the exported bundle does (same gate, greedy)."""

    def __init__(self, adapter, clip=None):
        from atp.calibration.retention.cls_attention import ClsAttentionScorer

        self.adapter = adapter
        self.gate = adapter.vision_module(ClsAttentionScorer())
        self.clip = clip
        if clip is not None:  # the bundle's CLIP text space: same patch embedder and text encoder as the exported graphs
            from atp.calibration.retention.atp_hybrid import AtpHybridScorer
            from atp.export.clip import ClipTextEncoder

            self.clip_patches = adapter.vision_module(AtpHybridScorer(text_space="clip"), clip=clip).clip_patches
            self.clip_text = ClipTextEncoder(clip.model).eval()
            self.clip_tok = clip.hf_tokenizer()
        self.probe = adapter.decoder_module()  # FastV's partial LM pass
        self.lm = adapter.language_model
        self.head = adapter.model.lm_head
        self.table = adapter.model.get_input_embeddings().weight.detach()
        self.template = adapter.prompt_template()
        self.tok = adapter.tokenizer
        self.eos = set(adapter.eos_token_ids())
        self.layout = adapter.token_layout()
        self.pre = adapter.preprocessing()

    def pixels(self, image) -> torch.Tensor:
        from atp.runtime.preprocess import preprocess

        return torch.from_numpy(preprocess(image, self.pre))

    def text_embeds(self, prompt: str) -> torch.Tensor:
        """``[1, D]`` mean of the prompt's token embeddings, as the runtime computes it."""
        ids = [i for i in self.tok(prompt, add_special_tokens=False)["input_ids"] if i < self.table.shape[0]]
        if not ids:
            return torch.zeros(1, self.table.shape[1])
        return self.table[ids].mean(dim=0, keepdim=True)

    def clip_text_embeds(self, prompt: str) -> torch.Tensor:
        """``[1, E]`` CLIP text embedding of the prompt, tokenized as the runtime does (truncated with the
        end-of-text token last, padded with 0) and encoded by the same module as the bundle's text graph."""
        ids = self.clip_tok.encode(prompt).ids
        n = self.clip.context_length
        if len(ids) > n:
            ids = ids[:n - 1] + [self.clip.tokenizer.encoder["<end_of_text>"]]
        row = torch.zeros(1, n, dtype=torch.int64)
        row[0, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return self.clip_text(row)

    def make_scorer(self, name: str, params: dict):
        """A scorer as the bundle would hold it: in CLIP text space when this model has open_clip and it supports it."""
        cls = SCORERS.get(name)
        extra = {"text_space": "clip"} if self.clip is not None and cls.supports_clip else {}
        return cls(**params, **extra).eval()

    def prompt_sequence(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(prefix [1, P, D], suffix [1, S, D]) token embeddings around the image (as the runtime feeds them)."""
        from atp.runtime.prompt import plan, text_around_image

        before, after = text_around_image(plan(ids, self.layout))
        return self.table[before][None], self.table[after][None]

    def prompt_ids(self, prompt: str) -> list[int]:
        from atp.errors import InputError
        from atp.runtime.prompt import plan

        ids = list(self.tok(self.template.replace("{prompt}", prompt), add_special_tokens=True)["input_ids"])
        try:
            plan(ids, self.layout, f"the templated prompt for {prompt!r}")
        except InputError as exc:
            raise CalibrationError(str(exc)) from None
        return ids

    @torch.no_grad()
    def answers(self, ids: list[int], image_embeds: torch.Tensor, max_new_tokens: int) -> list[tuple[int, ...]]:
        """Greedy answer token ids for each row of ``image_embeds [M, K, D]`` spliced in at the image token.

        Rows have the same length, so they run as one batch (no padding); each answer is cut after
        its first end-of-sequence token.
        """
        from atp.runtime.prompt import plan

        m = image_embeds.shape[0]
        e = torch.cat([image_embeds if seg.is_image else self.table[list(seg.ids)].expand(m, -1, -1)
                       for seg in plan(ids, self.layout)], dim=1)  # the runtime's splice, batched
        out = self.lm(inputs_embeds=e, use_cache=True)
        steps = []
        for step in range(max_new_tokens):
            tok = self.head(out.last_hidden_state[:, -1]).argmax(-1)
            steps.append(tok)
            if step + 1 == max_new_tokens or all(any(int(t[i]) in self.eos for t in steps) for i in range(m)):
                break
            out = self.lm(inputs_embeds=self.table[tok][:, None], past_key_values=out.past_key_values, use_cache=True)
        result = []
        for i in range(m):
            seq = []
            for t in steps:
                seq.append(int(t[i]))
                if seq[-1] in self.eos:
                    break
            result.append(tuple(seq))
        return result


def _sample_context(vlm: TorchVlm, sample, n: int):
    """(vision context with keep N and the CLS row computed once, prompt ids, ``[N, D]`` projected tokens,
    prompt embedding per text space)."""
    px = vlm.pixels(sample.image)
    ids = vlm.prompt_ids(sample.question)
    texts = {"lm": vlm.text_embeds(sample.question)}
    ctx = vlm.gate.context(px, torch.tensor(n), texts["lm"], *vlm.prompt_sequence(ids))
    ctx.lm_attention = vlm.probe.attention_probe
    cls_row = ctx.saliency()
    ctx.saliency = lambda: cls_row  # computed once, shared by every setting
    if vlm.clip is not None:
        texts["clip"] = vlm.clip_text_embeds(sample.question)
        patches = vlm.clip_patches(px)
        ctx.clip_patches = lambda: patches
    return ctx, ids, ctx.projected()[0], texts


def _score(ctx, scorer, texts: dict) -> torch.Tensor:
    """``scorer``'s scores with the prompt embedding of its text space."""
    ctx.text_embeds = texts[scorer.text_space]
    return scorer(ctx)


def _sample_answers(vlm: TorchVlm, scorers: dict, sample, ks: dict, max_new_tokens: int) -> dict:
    """Dense answer and the answer of every (setting, keep ratio) for one sample.

    Settings that keep the same token set share one answer; the distinct sets of one K run as one batch.
    """
    from atp.export.gate import topk_ascending

    with torch.no_grad():
        ctx, ids, projected, texts = _sample_context(vlm, sample, max(ks.values()))
        n = max(ks.values())
        dense = vlm.answers(ids, projected[None], max_new_tokens)[0]
        answers: dict[str, dict[str, tuple]] = {key: {} for key in scorers}
        for r, k in ks.items():
            if k == n:
                for key in scorers:
                    answers[key][str(r)] = dense
                continue
            ctx.keep = torch.tensor(k)
            sets = {key: tuple(topk_ascending(_score(ctx, scorer, texts), ctx.keep)[0].tolist()) for key, scorer in scorers.items()}
            unique = sorted(set(sets.values()))
            got = dict(zip(unique, vlm.answers(ids, projected[torch.tensor(unique)], max_new_tokens)))
            for key in scorers:
                answers[key][str(r)] = got[sets[key]]
    return {"dense": list(dense), "answers": {s: {r: list(a) for r, a in v.items()} for s, v in answers.items()}}


def _fit(cfg: RetentionCalibConfig, records: list[dict], ks: dict) -> tuple[dict, dict]:
    """(retention section, tensors) from per-sample answers."""
    ratios = list(cfg.keep_ratios)
    fit_ratios = [r for r in ratios if r < 1.0] or ratios
    curves, section_scorers = {}, {}
    for name in cfg.scorers:
        grid = cfg.grids.get(name, [{}])
        agreement = np.zeros((len(grid), len(ratios)), np.float64)
        for gi, params in enumerate(grid):
            key = setting_key(name, params)
            for ri, r in enumerate(ratios):
                agreement[gi, ri] = np.mean([rec["answers"][key][str(r)] == rec["dense"] for rec in records])
        objective = agreement[:, [ratios.index(r) for r in fit_ratios]].mean(axis=1)
        best = int(np.argmax(objective))  # first maximum: the default params win ties
        chosen = agreement[best]
        recommended = {}
        for b in cfg.budgets:
            ok = None
            for ri in range(len(ratios)):  # descending ratios: stop at the first one below the budget
                if chosen[ri] + 1e-12 < b:
                    break
                ok = ri
            r = ratios[ok] if ok is not None else 1.0
            recommended[f"{b:g}"] = {"keep_ratio": r, "k": ks[r], "agreement": float(chosen[ratios.index(r)])}
        section_scorers[name] = {
            "params": grid[best],
            "objective": float(objective[best]),
            "default_objective": float(objective[0]),
            "agreement": {f"{r:g}": float(a) for r, a in zip(ratios, chosen)},
            "recommended_keep": recommended,
            "grid_size": len(grid),
        }
        curves[f"{name}.agreement"] = agreement.astype(np.float32)
        curves[f"{name}.grid_index"] = np.arange(len(grid), dtype=np.int64)
    overall = {}
    for b in cfg.budgets:
        key = f"{b:g}"
        name = min(cfg.scorers, key=lambda s: (section_scorers[s]["recommended_keep"][key]["keep_ratio"],
                                                -section_scorers[s]["objective"]))
        overall[key] = {"scorer": name, **section_scorers[name]["recommended_keep"][key]}
    section = {
        "method": "grid search maximising mean agreement with the dense model's greedy answers over keep ratios < 1",
        "data": cfg.data, "split": "calib", "n_samples": len(records), "max_new_tokens": cfg.max_new_tokens,
        "keep_ratios": ratios, "k": {f"{r:g}": ks[r] for r in ratios}, "num_visual_tokens": max(ks.values()),
        "budgets": list(cfg.budgets), "scorers": section_scorers, "recommended_keep": overall,
        "grids": {name: cfg.grids.get(name, [{}]) for name in cfg.scorers},
        "tensors": "retention.safetensors: <scorer>.agreement [grid point, keep ratio] in the order of grids/keep_ratios",
    }
    return section, curves


def _run_id(cfg: RetentionCalibConfig, fingerprint: str) -> str:
    return hashlib.sha256(json.dumps([asdict(cfg), fingerprint], sort_keys=True, default=str).encode()).hexdigest()[:16]


def calibrate_retention(adapter, cfg: RetentionCalibConfig, partial_dir: Path | None = None, progress: bool = True,
                        fingerprint: str | None = None, clip=None) -> tuple[dict, dict]:
    """Measure every scorer setting on the calibration samples and fit the retention section.

    Args:
        adapter: Loaded architecture adapter.
        cfg: What to search.
        partial_dir: Where per-sample progress is appended (resumed when it matches this run).
        progress: Show a tqdm progress bar.
        fingerprint: The model's fingerprint (computed when not given).
        clip: The open_clip model (:class:`atp.export.clip.OpenClip`) the bundle will be exported with: scorers
            that support it (``atp``) are fitted in CLIP text space, as the bundle will run them.

    Returns:
        (retention section dict, tensors for ``retention.safetensors``).
    """
    from tqdm import tqdm

    samples = calibration_samples(cfg.data, cfg.limit)
    if not samples:
        raise CalibrationError(f"no calibration samples in {cfg.data}")
    n = adapter.num_visual_tokens
    ks = {r: resolve_keep(n, keep_ratio=r) for r in cfg.keep_ratios}
    vlm = TorchVlm(adapter, clip)
    scorers = {setting_key(name, p): vlm.make_scorer(name, p) for name, p in cfg.settings()}
    records: dict[int, dict] = {}
    log_file = None
    if partial_dir is not None:
        run_id = _run_id(cfg, (fingerprint or adapter_fingerprint(adapter)) + (f"|clip:{clip.name}" if clip is not None else ""))
        partial_dir.mkdir(parents=True, exist_ok=True)
        meta = partial_dir / "run.json"
        log_file = partial_dir / "samples.jsonl"
        if meta.is_file() and json.loads(meta.read_text()).get("run_id") == run_id and log_file.is_file():
            for line in log_file.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by the interruption
                    continue
                records[rec["i"]] = rec
            log.info("resuming: %d of %d samples already done (%s)", len(records), len(samples), partial_dir)
        else:
            meta.write_text(json.dumps({"run_id": run_id}))
            log_file.write_text("")
            (partial_dir / "auto.jsonl").write_text("")
    log.info("calibrating %d settings of %s on %d %s calibration questions, keep ratios %s", len(scorers),
             ", ".join(cfg.scorers), len(samples), cfg.data, ", ".join(f"{r:g}" for r in cfg.keep_ratios))
    todo = [i for i in range(len(samples)) if i not in records]
    with tqdm(total=len(samples), initial=len(samples) - len(todo), desc="calibrate", disable=not progress, mininterval=2) as bar:
        for i in todo:
            rec = {"i": i, **_sample_answers(vlm, scorers, samples[i], ks, cfg.max_new_tokens)}
            records[i] = rec
            if log_file is not None:
                with open(log_file, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            bar.update(1)
    ordered = [records[i] for i in range(len(samples))]
    section, tensors = _fit(cfg, ordered, ks)
    section["text_space"] = {nm: getattr(sc, "text_space", "lm") for nm, sc in
                             ((nm, vlm.make_scorer(nm, {})) for nm in cfg.scorers) if sc.needs_text}
    section["clip_model"] = clip.name if clip is not None else None
    names = [nm for nm in cfg.scorers if SCORERS.get(nm).auto_keep_supported] if cfg.auto_keep else []
    if names:
        from atp.calibration.auto_keep_fit import sample_auto_keep, fit_auto_keep

        chosen = {nm: vlm.make_scorer(nm, section["scorers"][nm]["params"]) for nm in names}
        auto: dict[int, dict] = {}
        auto_file = partial_dir / "auto.jsonl" if partial_dir is not None else None
        if auto_file is not None and auto_file.is_file():
            for line in auto_file.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                auto[rec["i"]] = rec
        todo = [i for i in range(len(samples)) if i not in auto]
        with tqdm(total=len(samples), initial=len(samples) - len(todo), desc="calibrate auto K", disable=not progress,
                  mininterval=2) as bar:
            for i in todo:
                rec = {"i": i, **sample_auto_keep(vlm, chosen, samples[i], ks, cfg.fractions, cfg.max_new_tokens)}
                auto[i] = rec
                if auto_file is not None:
                    with open(auto_file, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                bar.update(1)
        tensors.update(fit_auto_keep(cfg, section, ordered, [auto[i] for i in range(len(samples))], ks))
    return section, tensors


def threads_for_small_batches() -> int:
    """One intra-op thread: calibration runs many tiny batches, where thread hand-offs cost more than they
    save (13x faster on a busy 2-core machine); ``ATP_CALIB_THREADS`` overrides."""
    import os

    return max(1, int(os.environ.get("ATP_CALIB_THREADS", "1")))


def run_calibrate(adapter, cfg: RetentionCalibConfig, out: str | Path, overwrite: bool = False, resume: bool = True,
                  progress: bool = True, extra_steps=(), clip=None) -> CalibrationArtifact:
    """Calibrate ``adapter``'s model and write the artifact directory ``out``.

    Args:
        extra_steps: Callables ``step(adapter, artifact)`` run after the retention section is set and
            before the artifact is written; each adds its own section with ``artifact.set_section(name,
            data, tensors)`` (e.g. ``quantization``).
    """
    out = Path(out)
    kind = adapter.layout_kind
    if kind != "fixed":
        raise CalibrationError(f"retention calibration runs on one-view architectures so far; {adapter.name} makes "
                               f"several views of each image (token layout {kind!r}): export without --calibration "
                               "(the scorers' default parameters), or calibrate --bits only")
    if out.exists() and not overwrite:
        raise CalibrationError(f"{out} already exists; pass --overwrite or choose another --out")
    fingerprint = adapter_fingerprint(adapter)
    partial = out.with_name(f"{out.name}.partial")
    if not resume and partial.exists():
        shutil.rmtree(partial)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads_for_small_batches())
    try:
        section, tensors = calibrate_retention(adapter, cfg, partial, progress=progress, fingerprint=fingerprint, clip=clip)
    finally:
        torch.set_num_threads(threads)
    art = CalibrationArtifact(fingerprint, adapter.source)
    art.set_section("retention", section, tensors)
    for step in extra_steps:
        step(adapter, art)
    art.save(out, overwrite=overwrite)
    shutil.rmtree(partial, ignore_errors=True)
    return art


def scorer_params_from(art: CalibrationArtifact) -> dict[str, dict]:
    """``scorer -> constructor kwargs`` recorded in an artifact's retention section (empty when none)."""
    sec = art.section("retention") or {}
    return {name: dict(v.get("params", {})) for name, v in (sec.get("scorers") or {}).items()}


def check_text_space(art: CalibrationArtifact, scorers, clip=None) -> None:
    """Refuse to apply blend weights fitted in another text space than the bundle's (CLIP vs LM embedding space).

    Raises:
        CalibrationError: a scorer was calibrated in CLIP space and the export has no open_clip model, or the
            other way round. Artifacts without a ``text_space`` record were fitted in LM space.
    """
    sec = art.section("retention") or {}
    fitted = sec.get("text_space") or {}
    for name in scorers:
        if name not in (sec.get("scorers") or {}):
            continue
        cls = SCORERS.get(name)
        if not cls.needs_text:
            continue
        want = fitted.get(name, "lm")
        have = "clip" if clip is not None and cls.supports_clip else "lm"
        if want != have:
            how = (f"export with the same --clip-model ({sec.get('clip_model')})" if want == "clip"
                   else "calibrate with --clip-model too")
            raise CalibrationError(f"the calibration artifact fitted {name!r} with text relevance in {want.upper()} space, but this "
                                   f"bundle measures it in {have.upper()} space: {how}, or recalibrate")
    if clip is not None and sec.get("clip_model") not in (None, clip.name):
        log.warning("calibration used open_clip %s, this export uses %s", sec.get("clip_model"), clip.name)


def grid_points(name: str) -> list[dict]:
    """The grid searched for ``name`` (``[{}]`` when it has no blend weights)."""
    return [dict(p) for p in PARAM_GRIDS.get(name, [{}])]


__all__ = ["RetentionCalibConfig", "calibrate_retention", "run_calibrate", "scorer_params_from", "calibration_samples",
           "PARAM_GRIDS", "TorchVlm", "check_text_space"]
