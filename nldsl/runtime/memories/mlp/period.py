"""One period of a 2-layer MLP memory on l2, by gd or momentum, as one autograd node:
the read of the period's queries, the gradient of its items and the update rule,
with the backward written out (the fused path's loop over periods, runtime/fused.py).

Autograd's replay of the same ops pays for every elementwise op on a state-sized
tensor, and on a CPU such a pass over fresh memory costs as much as a small matmul
(docs/performance.md). The written backward makes fewer of them: the products that
add into one tensor are a chain of `baddbmm` into it, in place after the first, and
the rule's per-head decay and momentum reach their gradients as dot products.

Head-major tensors (memories/layout.py): states W1 [B, h, o, k], W2 [B, h, k, i];
keys and queries [B, h, n, i], values [B, h, n, o], rates w [B, h, n, 1], the
period's decay α and momentum β [B, h, 1, 1] or None. The node sees them with the
batch dims folded into one, G = B·h, and calls `bmm` itself: `@` on 4-d tensors
expands and reshapes both sides and the result, about six dispatched ops to one
product, which at a period's sizes cost more than the product. For item j, with
z = W2 k_j, a = σ(z), y = W1 a (+ k_j), r = w_j (y − v_j), h = W1ᵀ r:

    ∇W1 = Σ r aᵀ,  ∇W2 = Σ (h ⊙ σ'(z)) k_jᵀ
    gd        W' = α W − ∇W
    momentum  Z' = β Z − ∇W;  W' = α W + Z'

The backward is itself differentiable (a task level above takes the gradient of a
gradient through it): under create_graph it recomputes the forward's intermediates
from the inputs with autograd on, so the second derivative sees them. Tests hold
both orders to autograd over the plain formulas (naive.py, rules.apply_rule)."""
from __future__ import annotations

import math

import torch

from ...ops import ACT, ACT_GRAD, written_backward
from ...regions import compiled
from ....vocab import DEFAULT_ACTIVATION


def _act(act: str, z, slope: bool):
    """σ(z), σ'(z) when `slope`, and what σ''(z) can reuse of them (silu's sigmoid)."""
    if act == "silu":  # σ' = s + a (1 − s), with s the sigmoid and a = z s
        s = torch.sigmoid(z)
        a = z * s
        return a, torch.addcmul(s + a, a, s, value=-1) if slope else None, s
    a = ACT[act](z)
    if not slope:
        return a, None, None
    if act in ("sigmoid", "tanh"):  # σ' from σ
        return a, a * (1 - a) if act == "sigmoid" else 1 - a * a, None
    return a, ACT_GRAD[act](z), None


def _act2(act: str, z, a, s):
    """σ''(z), given a = σ(z) and what `_act` kept."""
    if act == "silu":  # s (1 − s) (2 + z − 2a)
        return torch.addcmul(s, s, s, value=-1) * torch.sub(z, a, alpha=2).add_(2)
    if act == "gelu":
        return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) * (2 - z * z)
    if act == "tanh":
        return -2 * a * (1 - a * a)
    if act == "sigmoid":
        return a * (1 - a) * (1 - 2 * a)
    return torch.zeros_like(z)  # relu, identity


def _addmm(C, *products, alpha: float = 1.0, fresh: bool = False):
    """C + alpha · Σ A @ B, for products (A, B, A, B, ...). baddbmm copies its input before
    it adds, so only the first product makes a new tensor and the rest add into it in
    place; into C itself when C is `fresh` (made here, used by nothing else). No backward
    needs the tensor added into, so this is safe under autograd."""
    for i, (A, B) in enumerate(zip(products[::2], products[1::2])):
        C = C.baddbmm_(A, B, alpha=alpha) if fresh or i else torch.baddbmm(C, A, B, alpha=alpha)
    return C


def _dots(a1, b1, a2, b2):
    """⟨a1, b1⟩ + ⟨a2, b2⟩ for each of the G states, [G, 1, 1]. A `bmm` of a row by a
    column took 3.5× the time of `vecdot` on the flattened states (at [16, 32, 64])."""
    flat = lambda t: t.reshape(t.shape[0], -1)  # noqa: E731
    return torch.linalg.vecdot(flat(a1), flat(b1)).add_(torch.linalg.vecdot(flat(a2), flat(b2)))[:, None, None]


def _forward(W1, W2, Z1, Z2, k, v, q, w, alpha, beta, act, residual, train: bool):
    """The period's read and update, and, when `train`, what the backward needs: σ'' and the
    read's slope are made here from the sigmoid the forward has, not again there."""
    z = torch.bmm(k, W2.mT)
    a, ds, s = _act(act, z, slope=True)
    e = torch.baddbmm(k - v, a, W1.mT) if residual else torch.baddbmm(v, a, W1.mT, beta=-1)  # y − v
    r = w * e
    h = torch.bmm(r, W1)
    dz = h * ds
    news = []
    for W, Z, grad in ((W1, Z1, (r.mT, a)), (W2, Z2, (dz.mT, k))):
        if Z is None:  # gd
            news.append((_addmm(W, *grad, alpha=-1.0) if alpha is None else
                         _addmm(alpha * W, *grad, alpha=-1.0, fresh=True), None))
        else:
            Zn = _addmm(Z, *grad, alpha=-1.0) if beta is None else _addmm(beta * Z, *grad, alpha=-1.0, fresh=True)
            news.append((Zn + W if alpha is None else torch.addcmul(Zn, alpha, W), Zn))
    parts = dict(a=a, ds=ds, e=e, r=r, dz=dz, hs2=h * _act2(act, z, a, s) if train else None)
    yq = None
    if q is not None:  # the read yq = W1 σ(W2 q) (+ q)
        aq, parts["dsq"], _ = _act(act, torch.bmm(q, W2.mT), slope=train)
        yq, parts["aq"] = (torch.baddbmm(q, aq, W1.mT) if residual else torch.bmm(aq, W1.mT)), aq
    return yq, news, parts


class _MLPPeriod(torch.autograd.Function):
    @staticmethod
    def forward(ctx, W1, W2, Z1, Z2, k, v, q, w, alpha, beta, act: str, residual: bool, backend: str | None,
                train: bool):
        run = _forward if backend is None else compiled(_forward, backend)  # regions.py
        yq, ((W1n, Z1n), (W2n, Z2n)), parts = run(W1, W2, Z1, Z2, k, v, q, w, alpha, beta, act, residual, train)
        ctx.act, ctx.residual, ctx.backend = act, residual, backend
        ctx.save_for_backward(W1, W2, Z1, Z2, k, v, q, w, alpha, beta, *(parts.get(p) for p in _SAVED))
        return _outputs(yq, W1n, W2n, Z1n, Z2n)

    @staticmethod
    def backward(ctx, *grads):
        W1, W2, Z1, Z2, k, v, q, w, alpha, beta, *saved = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the intermediates as functions of the inputs, eagerly
            parts, run = _forward(W1, W2, Z1, Z2, k, v, q, w, alpha, beta, ctx.act, ctx.residual, True)[2], _backward
        else:  # a compiled region's backward is never differentiated: this one may be compiled
            parts = dict(zip(_SAVED, saved))
            run = _backward if ctx.backend is None else compiled(_backward, ctx.backend)
        gW1n, gW2n, *grads = grads
        gZ1n, gZ2n = (grads.pop(0), grads.pop(0)) if Z1 is not None else (None, None)
        gyq = grads.pop(0).contiguous() if q is not None else None
        return run(ctx.residual, W1, W2, Z1, Z2, k, q, w, alpha, beta, parts, gW1n, gW2n, gZ1n, gZ2n,
                   gyq) + (None, None)


_SAVED = ("a", "ds", "e", "r", "dz", "hs2", "aq", "dsq")


def _outputs(yq, W1n, W2n, Z1n, Z2n) -> tuple:
    """The period's results in the node's order: the states, the momenta (momentum), the read."""
    return (W1n, W2n) + ((Z1n, Z2n) if Z1n is not None else ()) + ((yq,) if yq is not None else ())


def _backward(residual: bool, W1, W2, Z1, Z2, k, q, w, alpha, beta, p, gW1n, gW2n, gZ1n, gZ2n, gyq):
    a, ds, e, r, dz, hs2, aq, dsq = (p.get(name) for name in _SAVED)
    # the rule: N = ∂/∂(−∇W), what reaches the period's gradient
    N1, N2 = (gW1n, gW2n) if Z1 is None else (gZ1n + gW1n, gZ2n + gW2n)
    g_alpha = None if alpha is None else _dots(gW1n, W1, gW2n, W2)
    g_beta = None if beta is None or Z1 is None else _dots(N1, Z1, N2, Z2)
    dW1, dW2 = (gW1n, gW2n) if alpha is None else (alpha * gW1n, alpha * gW2n)
    gZ1 = gZ2 = None
    if Z1 is not None:
        gZ1, gZ2 = (N1, N2) if beta is None else (beta * N1, beta * N2)
    # ∇W1 = rᵀ a and ∇W2 = dzᵀ k enter with −N. What follows is the negated gradient of
    # each item tensor (g·' = −g·), so that no state-sized −N is made; the signs are
    # paid back in the ops' alpha and beta, and on the small [G, n, 1] rate gradient.
    gdz = torch.bmm(k, N2.mT)
    # dz = h ⊙ σ'(z), h = r W1
    gh = gdz * ds
    gz = gdz * hs2  # hs2 = h ⊙ σ''(z)
    gr = torch.baddbmm(torch.bmm(a, N1.mT), gh, W1.mT)
    # r = w (y − v); y = W1 σ(W2 k) (+ k)
    ge = w * gr  # −∂/∂e, which is ∂/∂v
    gw = (gr * e).sum(-1, keepdim=True).neg_()
    gz = torch.addcmul(gz, torch.baddbmm(torch.bmm(r, N1), ge, W1), ds)
    gk = torch.baddbmm(torch.bmm(dz, N2), gz, W2, beta=-1, alpha=-1)
    if residual:
        gk = gk - ge
    fresh = alpha is not None  # dW = α gW' was made here; without α it is the incoming gradient
    gW1 = _addmm(dW1, ge.mT, a, r.mT, gh, alpha=-1.0, fresh=fresh)
    gW2 = _addmm(dW2, gz.mT, k, alpha=-1.0, fresh=fresh)
    gq = None
    if q is not None:  # the read yq = W1 σ(W2 q) (+ q)
        gzq = torch.bmm(gyq, W1) * dsq
        gq = torch.baddbmm(gyq, gzq, W2) if residual else torch.bmm(gzq, W2)
        gW1, gW2 = _addmm(gW1, gyq.mT, aq, fresh=True), _addmm(gW2, gzq.mT, q, fresh=True)
    return gW1, gW2, gZ1, gZ2, gk, ge, gq, gw, g_alpha, g_beta, None, None


def mlp_period(theta: dict, z: dict | None, k, v, q, w, alpha=None, beta=None, *, act: str = DEFAULT_ACTIVATION,
               residual: bool = False, backend: str | None = None):
    """One period. theta {W1, W2}, z its momentum ({W1, W2}) or None for gd; q None when
    the memory is not read. Returns (y [B, h, m, o] or None, theta', z'). Tensors may come
    with their batch dims folded, [G, ...] (a loop over periods folds them once); returned
    as they came. With `backend`, the period's algebra runs compiled by torch.compile on
    it (runtime/regions.py)."""
    lead = k.shape[:-2]
    Z1, Z2 = (None, None) if z is None else (z["W1"], z["W2"])
    args = [None if t is None else t.flatten(0, -3)
            for t in (theta["W1"], theta["W2"], Z1, Z2, k, v, q, w, alpha, beta)]
    train = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args)
    if written_backward():
        outs = list(_MLPPeriod.apply(*args, act, bool(residual), backend, train))
    else:  # traced by torch.compile: the period's formulas, under autograd
        yq, ((W1n, Z1n), (W2n, Z2n)), _ = _forward(*args, act, bool(residual), False)
        outs = list(_outputs(yq, W1n, W2n, Z1n, Z2n))
    if len(lead) != 1:
        outs = [t.unflatten(0, lead) for t in outs]
    y = outs.pop() if q is not None else None

    def keyed(W1, W2, order):  # in the order of the state given (the loop's order, kept by every path)
        return {name: {"W1": W1, "W2": W2}[name] for name in order}
    return y, keyed(*outs[:2], theta), None if z is None else keyed(*outs[2:], z)
