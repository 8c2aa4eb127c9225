"""Products of per-item rates (decays α, momenta β) inside a chunk: what the per-token
rule (`per_token`, Titans' mini-batch rule) multiplies each item's step by, token by
token (runtime/level.py), and what gd's per-token rule puts on the rates of its one
step per period on the fused path (runtime/fused.py)."""
from __future__ import annotations

import torch


def products(r: torch.Tensor, last: bool = False) -> torch.Tensor:
    """D [B, h, n, n] of a per-item rate r [B, n, h]: D[t, i] = Π_{i<l≤t} r_l for i ≤ t, else 0,
    the factor by which token t's rates have scaled item i's step. One cumprod down each
    column, with no division, so a rate of 0 is exact. With `last`, only the row of the
    chunk's last token, [B, h, 1, n], as one product per item: all a rule that reads
    before needs, and a cumprod's gradient, when it is differentiated again (a task
    level's), loops over the chunk's length."""
    n = r.shape[1]
    one = torch.ones((), dtype=r.dtype, device=r.device)
    if last:
        later = torch.ones(n, n, dtype=torch.bool, device=r.device).triu(1)  # [i, l]: l > i
        return torch.where(later, r.transpose(1, 2).unsqueeze(-2), one).prod(-1).unsqueeze(-2)
    later = torch.ones(n, n, dtype=torch.bool, device=r.device).tril(-1)  # [t, i]: t > i
    return torch.where(later, r.transpose(1, 2).unsqueeze(-1), one).cumprod(-2).tril()


def later_decays(alpha: torch.Tensor, period: int) -> torch.Tensor:
    """Π_{l>i} α_l over the rest of item i's period, for rates α [B, n, h] of whole periods:
    the decay the per-token rule puts on item i's step by its period's end. On gd's rates,
    its one step per period is its per-token rule, read before."""
    B, n, h = alpha.shape
    rows = products(alpha.reshape(B * (n // period), period, h), last=True)[..., -1, :]  # [B·periods, h, P]
    return rows.transpose(1, 2).reshape(B, n, h)
