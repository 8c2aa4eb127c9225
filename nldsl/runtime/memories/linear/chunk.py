"""Chunk-parallel form of a linear memory learning by gradient descent (design §5-§6).

A `linear` memory on `l2` (or `dot`) with `gd` and period P follows, per head,

    S_{j+1} = a_j S_j + Σ_{s∈j} u_s k_sᵀ,   u_s = η_s (v_s − S_j k_s)   (l2)
                                            u_s = η_s v_s               (dot)

with a_j the product of the period's decays: the gated delta rule when P = 1. With
`decay_first` the gradient is taken at the decayed state, u_s = η_s (v_s − a_j S_j k_s):
Gated DeltaNet's S_t = α_t S_{t-1}(I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ when P = 1. Over a
tile of C tokens (a multiple of P) starting at state S_0, with Γ_p the product of the
decays of the tile's periods before p, the state before period p is

    S_p = Γ_p S_0 + Σ_{s: p(s) < p} (Γ_p / Γ_{p(s)+1}) u_s k_sᵀ,

so the u_s solve a unit lower-triangular system (the UT transform of DeltaNet
kernels, here with whole periods as the blocks):

    (I + A) U = diag(η) V − diag(η Γ_p(s)) K S_0ᵀ,
    A[s, r] = η_s (Γ_p(s) / Γ_p(r)+1) k_sᵀ k_r   for p(r) < p(s).

With `decay_first`, Γ_p(s) becomes Γ_p(s)+1 in both (the gradient point includes the
decay of s's own period). With T = (I + A)⁻¹, U = T diag(η) V − W S_0ᵀ where
W = T diag(η Γ) K does not depend on S_0: everything but one small matmul per tile runs for all tiles at once.
Reads follow from the same sums (`read before`: S_p(t) q_t; `read within`: the
period's decay so far on S_p(t), plus the period's own u_s k_sᵀ up to t).

With `per_token` (Titans' mini-batch rule) the state steps at every token,
S_t = α_t S_{t−1} + u_t k_tᵀ with u_t still taken at S_p(t): item s joins the state at
s itself, so the decays of the items after it, in its own period too, scale its
u_s k_sᵀ. Only that entry point changes: log Γ_p(s)+1 becomes the log decay up to s.

Decays enter in log space, summed inside a tile only; a log decay is clamped at
−60 (a decay below 1e-26 counts as 1e-26, below float32's resolution next to 1).
The tile size changes rounding only, never the result.
"""
from __future__ import annotations

import torch

LOG_FLOOR = -60.0


def _tiles(x: torch.Tensor, C: int) -> torch.Tensor:
    """[B, n, h, ...] -> [B, h, N, C, ...], zero-padded to a whole number of tiles
    (padded items have η = 0 and decay 1: they change nothing)."""
    x = x.transpose(1, 2)
    pad = (-x.shape[2]) % C
    if pad:
        x = torch.cat([x, x.new_zeros(*x.shape[:2], pad, *x.shape[3:])], 2)
    return x.reshape(*x.shape[:2], x.shape[2] // C, C, *x.shape[3:])


def delta_rule(S0: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eta: torch.Tensor,
               log_decay: torch.Tensor | None, *, period: int, tile: int, within: bool, l2: bool = True,
               decay_first: bool = False, per_token: bool = False):
    """Reads and end state of a linear memory over n tokens starting at a period boundary
    (n a multiple of the period). S0 [B, h, o, i]; q, k [B, n, h, i]; v [B, n, h, o];
    η and log α [B, n, h]. Returns (o [B, n, h, o], S_end [B, h, o, i])."""
    n, P = k.shape[1], period
    C = P * max(1, tile // P)
    nP = C // P
    Q, K, V, eta = _tiles(q, C), _tiles(k, C), _tiles(v, C), _tiles(eta, C)
    ld = _tiles(log_decay.clamp(min=LOG_FLOOR), C) if log_decay is not None else torch.zeros_like(eta)

    item = torch.arange(C, device=k.device)
    per = item // P  # the period of each item inside its tile
    onehot = (per[:, None] == torch.arange(nP, device=k.device)[None, :]).to(ld.dtype)  # [C, nP]
    lp = ld @ onehot  # each period's log decay
    before = (lp.cumsum(-1) - lp) @ onehot.T  # log Γ_p(t): the periods before t's, per item
    end = before + lp @ onehot.T  # log Γ_p(t)+1
    total = lp.sum(-1)  # the whole tile's
    cum = ld.cumsum(-1)  # the log decay up to each item
    enter = cum if per_token else end  # where each item's step joins the state

    earlier = per[:, None] > per[None, :]  # [t, s]: s in an earlier period than t

    def decay_between(to: torch.Tensor, seen: torch.Tensor = earlier) -> torch.Tensor:
        """[.., t, s] = exp(to_t − enter_s) where seen[t, s] (s in an earlier period), else 0."""
        diff = to[..., :, None] - enter[..., None, :]
        return torch.where(seen, diff, torch.full_like(diff, float("-inf"))).exp()

    if l2:
        at = end if decay_first else before  # log of the decay on S_0 where each item's gradient is taken
        A = eta[..., :, None] * decay_between(at) * (K @ K.transpose(-1, -2))
        eye = torch.eye(C, dtype=A.dtype, device=A.device).expand_as(A)
        T = torch.linalg.solve_triangular(eye + A, eye, upper=False, unitriangular=True)
        Uv = T @ (eta[..., None] * V)
        W = T @ ((eta * at.exp())[..., None] * K)
    else:
        Uv, W = eta[..., None] * V, None

    if within:  # the period's decay so far, and the period's own items up to t
        read = cum
        if per_token:  # every item up to t, decayed by the items after it
            mask = decay_between(read, item[:, None] >= item[None, :])
        else:
            same = (per[:, None] == per[None, :]) & (item[:, None] >= item[None, :])
            mask = decay_between(read) + same.to(ld.dtype)
    else:
        read = before
        mask = decay_between(before)
    QK = (Q @ K.transpose(-1, -2)) * mask  # [B, h, N, C, C]
    to_end = (total[..., None] - enter).exp()  # [B, h, N, C]

    S, outs = S0, []
    for j in range(Q.shape[2]):  # the one sequential part: a few matmuls per tile
        U = Uv[:, :, j] if W is None else Uv[:, :, j] - W[:, :, j] @ S.transpose(-1, -2)
        outs.append(read[:, :, j, :, None].exp() * (Q[:, :, j] @ S.transpose(-1, -2)) + QK[:, :, j] @ U)
        S = total[:, :, j, None, None].exp() * S + (to_end[:, :, j, :, None] * U).transpose(-1, -2) @ K[:, :, j]
    o = torch.cat(outs, 2)[:, :, :n]
    return o.transpose(1, 2), S
