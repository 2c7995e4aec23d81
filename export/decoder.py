"""Decoder graph: one graph for prefill and decode with an explicit KV cache.

Inputs ``inputs_embeds [B,S,D]``, ``attention_mask [B,P+S]`` (1 = real token),
``position_ids [B,S]``, ``past_key_values.{i}.key/value [B,Hkv,P,hd]``; outputs
``logits [B,1,V]`` (last position only: generation never needs more, and the
lm_head over all prefill positions is a large share of prefill time for small
models) and ``present.{i}.key/value [B,Hkv,P+S,hd]``. Names follow
onnxruntime-genai. Attention is written out here (rather than traced through
transformers' cache classes) so the graph is plain ONNX and the KV layout is ours.

Qwen3-style q / k norms (RMSNorm over each head before RoPE) are applied where the attention has them. With
``deepstack`` levels (Qwen3-VL DeepStack), ``deepstack_embeds [L, B, S, D]`` follows ``position_ids`` and level i is
added to the hidden states after decoder layer i (zero rows where a position holds no visual token: the same as
transformers' masked add).

With ``kv_dtype="int8"`` the cache is int8 with one fp32 scale per (batch, head, token)
(:mod:`atp.calibration.kv`): each layer has ``past_key_values.{i}.key``, ``.key_scale``,
``.value``, ``.value_scale`` (and the same ``present.*``); new keys/values are quantized when
they enter the cache and the whole cache is dequantized at attention.
"""

from __future__ import annotations

import torch
from torch import nn

from atp.calibration.kv import dequantize_kv_torch, quantize_kv_torch


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


class LlamaLikeDecoder(nn.Module):
    """Llama / Mistral / Qwen2 decoder stack + lm_head with an explicit KV cache.

    Args:
        language_model: The ``*Model`` (``layers``, ``norm``, ``rotary_emb``).
        lm_head: Output projection.
        config: The text config (heads, kv heads, head_dim).
    """

    def __init__(self, language_model: nn.Module, lm_head: nn.Module, config, kv_dtype: str = "float32",
                 all_logits: bool = False, deepstack: int = 0):
        super().__init__()
        if kv_dtype not in ("float32", "int8"):
            raise ValueError(f"kv_dtype must be float32 or int8, got {kv_dtype!r}")
        self.kv_dtype = kv_dtype
        self.all_logits = all_logits  # logits of every position (perplexity evaluation), not only the last
        self.layers = language_model.layers
        self.norm = language_model.norm
        self.rotary_emb = language_model.rotary_emb
        self.lm_head = lm_head
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.max_positions = int(getattr(config, "max_position_embeddings", None) or 4096)  # RoPE cache length (fused graph)
        self.deepstack = int(deepstack)  # DeepStack levels: deepstack_embeds [L, B, S, D] after position_ids
        if self.deepstack > len(self.layers):
            raise ValueError(f"{self.deepstack} DeepStack levels but only {len(self.layers)} decoder layers")

    @property
    def kv_per_layer(self) -> int:
        """Cache tensors per layer: key, value (float32) or key, key_scale, value, value_scale (int8)."""
        return 4 if self.kv_dtype == "int8" else 2

    @staticmethod
    def _qk(attn, x, heads: int, kv_heads: int, head_dim: int):
        """Queries and keys ``[B, H, S, hd]`` before RoPE (with the attention's q / k norms where it has them)."""
        b, s, _ = x.shape
        q = attn.q_proj(x).view(b, s, heads, head_dim)
        k = attn.k_proj(x).view(b, s, kv_heads, head_dim)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        return q.transpose(1, 2), k.transpose(1, 2)

    def _attention(self, attn, x, cos, sin, past, bias):
        b, s, _ = x.shape
        q, k = self._qk(attn, x, self.num_heads, self.num_kv_heads, self.head_dim)
        v = attn.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if self.kv_dtype == "int8":
            pk, pks, pv, pvs = past
            qk, sk = quantize_kv_torch(k)
            qv, sv = quantize_kv_torch(v)
            cache = [torch.cat([pk, qk], dim=2), torch.cat([pks, sk], dim=2), torch.cat([pv, qv], dim=2), torch.cat([pvs, sv], dim=2)]
            k, v = dequantize_kv_torch(cache[0], cache[1]), dequantize_kv_torch(cache[2], cache[3])
        else:
            cache = [torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)]
            k, v = cache
        groups = self.num_heads // self.num_kv_heads
        scores = torch.matmul(q, _repeat_kv(k, groups).transpose(-1, -2)) * (self.head_dim**-0.5) + bias
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = torch.matmul(probs, _repeat_kv(v, groups)).transpose(1, 2).reshape(b, s, -1)
        return attn.o_proj(out), cache

    def attention_probe(self, h: torch.Tensor, layer: int, n_queries: int) -> torch.Tensor:
        """Attention of the last ``n_queries`` positions at decoder layer ``layer`` (clamped to the last one),
        mean over heads, after running the layers before it on the whole sequence ``h [B, T, D]``
        (positions 0..T-1, causal, no cache): ``[B, n_queries, T]``. FastV's scoring pass."""
        layer = min(layer, len(self.layers) - 1)
        b, t = h.shape[0], h.shape[1]
        pos = torch.arange(t, device=h.device)
        position_ids = pos[None].expand(b, t)
        allowed = (pos[None, :] <= pos[:, None])[None, None]
        neg = torch.finfo(h.dtype).min
        bias = torch.where(allowed, torch.zeros((), dtype=h.dtype), torch.full((), neg, dtype=h.dtype))
        cos, sin = self.rotary_emb(h, position_ids)
        empty = h.new_zeros((b, self.num_kv_heads, 0, self.head_dim))
        if self.kv_dtype == "int8":
            scale = h.new_zeros((b, self.num_kv_heads, 0, 1))
            empty_cache = [empty.to(torch.int8), scale, empty.to(torch.int8), scale]
        else:
            empty_cache = [empty, empty]
        for lyr in self.layers[:layer]:
            a, _ = self._attention(lyr.self_attn, lyr.input_layernorm(h), cos, sin, empty_cache, bias)
            h = h + a
            h = h + lyr.mlp(lyr.post_attention_layernorm(h))
        attn = self.layers[layer].self_attn
        x = self.layers[layer].input_layernorm(h)
        q, k = self._qk(attn, x, self.num_heads, self.num_kv_heads, self.head_dim)
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)
        q = (q * c + _rotate_half(q) * s)[:, :, t - n_queries:]
        k = k * c + _rotate_half(k) * s
        scores = torch.matmul(q, _repeat_kv(k, self.num_heads // self.num_kv_heads).transpose(-1, -2)) * (self.head_dim**-0.5)
        probs = torch.softmax(scores + bias[:, :, t - n_queries:], dim=-1)
        return probs.mean(dim=1)

    def forward(self, inputs_embeds, attention_mask, position_ids, *rest):
        deepstack, past = (rest[0], rest[1:]) if self.deepstack else (None, rest)
        s = inputs_embeds.shape[1]
        total = attention_mask.shape[1]
        past_len = total - s
        # Causal + padding mask as an additive bias [B,1,S,T]; query i sits at cache slot past_len + i.
        key_pos = torch.arange(total, device=inputs_embeds.device)
        query_pos = torch.arange(s, device=inputs_embeds.device) + past_len
        allowed = (key_pos[None, :] <= query_pos[:, None])[None, None] & (attention_mask[:, None, None, :] > 0)
        neg = torch.finfo(inputs_embeds.dtype).min
        bias = torch.where(allowed, torch.zeros((), dtype=inputs_embeds.dtype), torch.full((), neg, dtype=inputs_embeds.dtype))
        cos, sin = self.rotary_emb(inputs_embeds, position_ids)
        h = inputs_embeds
        presents = []
        n = self.kv_per_layer
        for i, layer in enumerate(self.layers):
            a, cache = self._attention(layer.self_attn, layer.input_layernorm(h), cos, sin, past[n * i:n * (i + 1)], bias)
            h = h + a
            h = h + layer.mlp(layer.post_attention_layernorm(h))
            if i < self.deepstack:
                h = h + deepstack[i]
            presents += cache
        logits = self.lm_head(self.norm(h if self.all_logits else h[:, -1:]))
        return (logits, *presents)
