"""An attention memory, the reference (design §2): causal softmax attention of a chunk's
queries over the keys and values the memory holds (its state, `level.Cache`)."""
from __future__ import annotations

import math

import torch

from ..layout import merge_heads, split_heads


def attention(q, K, V, q_pos, k_pos, bound_within: bool, period: int, window: int | None, heads: int):
    """Causal softmax attention of queries q [B, n, d] at absolute positions q_pos [n]
    over stored keys/values K, V [B, L, d] at positions k_pos [L] (design §2).

    A key at s is visible to the query at t when s < bound, with bound = t + 1 for
    `read within` and the start of t's period for `read before`; with a window c,
    only the last c items of that state are: s ≥ bound − c. A query that sees
    nothing reads zeros."""
    bound = q_pos + 1 if bound_within else (q_pos // period) * period
    visible = k_pos[None, :] < bound[:, None]
    if window is not None:
        visible = visible & (k_pos[None, :] >= bound[:, None] - window)
    qh, kh, vh = (split_heads(t, heads).transpose(1, 2) for t in (q, K, V))  # [B, h, n|L, dh]
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])
    seen = visible.any(-1, keepdim=True)  # a row with no visible key reads zeros, not NaN
    scores = scores.masked_fill(~visible, float("-inf")).masked_fill(~seen, 0.0)
    p = torch.softmax(scores, dim=-1) * seen
    return merge_heads((p @ vh).transpose(1, 2))
