"""An attention memory, the reference (design §2): causal softmax attention of a chunk's
queries over the keys and values the memory holds (its state, `level.Cache`)."""
from __future__ import annotations

import math

import torch

from ..layout import merge_heads, split_heads


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi's head-specific slopes (Press et al. 2022, §3): for h a power of 2, the
    geometric sequence 2^(−8/h), 2^(−16/h), ..., 2^(−8); otherwise those of the largest
    power of 2 below h, then every other slope of twice that power."""
    def powers(n):
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
    low = 1 << (heads.bit_length() - 1)
    return powers(low) + powers(2 * low)[0::2][:heads - low]


def attention(q, K, V, q_pos, k_pos, bound_within: bool, period: int, window: int | None, heads: int,
              alibi: bool = False, persistent: tuple | None = None, segment: bool = False):
    """Causal softmax attention of queries q [B, n, d] at absolute positions q_pos [n]
    over stored keys/values K, V [B, L, d] at positions k_pos [L] (design §2).

    A key at s is visible to the query at t when s < bound, with bound = t + 1 for
    `read within` and the start of t's period for `read before`; with a window c,
    only the last c items of that state are: s ≥ bound − c. A query that sees
    nothing reads zeros. With `alibi`, head h's score of s from t is lowered by
    m_h · (t − s) before the softmax.

    `persistent`: (K_p, V_p) [N, d], learned items before all others that every query
    sees, whatever its window or period, and that have no position (no ALiBi bias):
    Titans' persistent memory (Behrouz et al. 2024, §3.3), as keys and values. With
    `segment`, a query sees only the items of its own period (Titans MAC's segments,
    §4.1: causal attention within each). Several items may share a position."""
    bound = q_pos + 1 if bound_within else (q_pos // period) * period
    visible = k_pos[None, :] < bound[:, None]
    if window is not None:
        visible = visible & (k_pos[None, :] >= bound[:, None] - window)
    if segment:
        visible = visible & (k_pos[None, :] >= (q_pos // period * period)[:, None])
    distance = q_pos[:, None] - k_pos[None, :]
    if persistent is not None:
        n = persistent[0].shape[0]
        K, V = (torch.cat([p.to(t.dtype).expand(t.shape[0], -1, -1), t], 1) for p, t in zip(persistent, (K, V)))
        visible = torch.cat([visible.new_ones(visible.shape[0], n), visible], 1)
        distance = torch.cat([distance.new_zeros(distance.shape[0], n), distance], 1)
    qh, kh, vh = (split_heads(t, heads).transpose(1, 2) for t in (q, K, V))  # [B, h, n|L, dh]
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])
    if alibi:
        slopes = torch.tensor(alibi_slopes(heads), dtype=scores.dtype, device=scores.device)
        scores = scores - slopes[:, None, None] * distance.to(scores.dtype)
    seen = visible.any(-1, keepdim=True)  # a row with no visible key reads zeros, not NaN
    scores = scores.masked_fill(~visible, float("-inf")).masked_fill(~seen, 0.0)
    p = torch.softmax(scores, dim=-1) * seen
    return merge_heads((p @ vh).transpose(1, 2))
