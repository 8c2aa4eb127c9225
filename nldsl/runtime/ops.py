"""Flow functions: what the built-in calls of a spec compute (design §3).

Token streams are [B, n, d] (a batch of sequences, n items of this chunk); a
gradient stream in an optimizer is shaped like its parameter. Every function here
is plain torch, differentiable, and the same in the compiled module and in
emitted source.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _either(tensor_fn, number_fn):
    """An elementwise function of a tensor or of a plain number (e.g. sqrt(rows(W)))."""
    def f(x):
        return tensor_fn(x) if torch.is_tensor(x) else number_fn(x)
    return _named(f, tensor_fn.__name__)


def _named(f, name: str):
    """A function made here, named as the module attribute it is bound to: pickle (torch.save
    of a model, whose graphs call it) finds a function by that name."""
    f.__name__ = f.__qualname__ = name
    return f


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


silu = _either(F.silu, lambda x: x * _sigmoid(x))
gelu = _either(F.gelu, lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))))
relu = _either(F.relu, lambda x: max(x, 0.0))
tanh = _either(torch.tanh, math.tanh)
sigmoid = _either(torch.sigmoid, _sigmoid)
softplus = _either(F.softplus, lambda x: math.log1p(math.exp(x)))
exp = _either(torch.exp, math.exp)
sqrt = _either(torch.sqrt, math.sqrt)
abs = _either(torch.abs, lambda x: -x if x < 0 else x)
sign = _either(torch.sign, lambda x: float((x > 0) - (x < 0)))


def identity(x):
    return x


# activations of `mlp` memories, and their derivatives for closed-form gradients
ACT = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
       "identity": identity}
ACT_GRAD = {
    "silu": lambda z: (s := torch.sigmoid(z)) * (1 + z * (1 - s)),
    "gelu": lambda z: 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi),
    "relu": lambda z: (z > 0).to(z.dtype),
    "tanh": lambda z: 1 - torch.tanh(z) ** 2,
    "sigmoid": lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z)),
    "identity": torch.ones_like,
}


def act_vjp(act: str, g, z):
    """g · σ'(z) for the fused path's gradients: gelu's own backward op where ACT_GRAD
    spells out six (it is twice differentiable; silu's is not, so silu stays spelled out)."""
    if act == "gelu":
        return torch.ops.aten.gelu_backward(g, z)
    return g * ACT_GRAD[act](z)


def proj(x, weight):
    """An outer-level linear map (no bias), weight [d_out, d_in]."""
    return x @ weight.T


def written_backward() -> bool:
    """Whether an autograd node with its backward written out may run. Not while
    torch.compile traces: it takes such a node as differentiable once, so a gradient of a
    gradient through it (a task level's, through the levels after it) lost the node's
    part, silently (tests/test_compile.py). Traced, the plain formulas differentiate to
    any order, and the compiler fuses their passes itself."""
    return not torch.compiler.is_compiling()


def _unit(x, eps: float):
    """(x / (‖x‖ + eps), ‖x‖, 1 / (‖x‖ + eps)) over the last dim."""
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    r = (n + eps).reciprocal()
    return x * r, n, r


class _L2Norm(torch.autograd.Function):
    """y = x / (‖x‖ + eps) with its backward written out: ∂x = r (g − y ⟨g, y⟩ (‖x‖ + eps) / ‖x‖),
    r = 1 / (‖x‖ + eps), the norm's term 0 where x = 0. Three passes over x's size where
    autograd's replay of the formula makes seven."""
    @staticmethod
    def forward(ctx, x, eps: float):
        y, n, r = _unit(x, eps)
        ctx.eps = eps
        ctx.save_for_backward(x, y, n, r)
        return y

    @staticmethod
    def backward(ctx, g):
        x, y, n, r = ctx.saved_tensors
        if torch.is_grad_enabled():  # differentiated again: the same terms as functions of x
            y, n, r = _unit(x, ctx.eps)
        c = torch.linalg.vecdot(g, y).unsqueeze(-1) / (r * n).clamp_min(torch.finfo(x.dtype).tiny)
        return torch.addcmul(g, y, c, value=-1).mul_(r), None


def l2norm(x, heads: int = 1, eps: float = 1e-6):
    """Unit length per item, or per head slice with `heads`: x / (‖x‖ + eps). Without a
    gradient to take, the formula alone (a node's call costs more than it saves there),
    and under torch.compile (`written_backward`)."""
    shape = x.shape
    x = x.reshape(*shape[:-1], heads, shape[-1] // heads)
    node = torch.is_grad_enabled() and x.requires_grad and written_backward()
    y = _L2Norm.apply(x, eps) if node else _unit(x, eps)[0]
    return y.reshape(shape)


def rmsnorm(x, weight, eps: float = 1e-6, heads: int = 1):
    """RMS normalisation of each item, or of each of its `heads` equal slices; with heads,
    the scale `weight` has a head's size and is shared by the heads. In at least float32,
    as torch's own norms: in 16 bits the backward's 1/rms³ overflows for items as small as
    the embedding's."""
    shape = x.shape
    wide = x.to(torch.promote_types(x.dtype, torch.float32)).reshape(*shape[:-1], heads, shape[-1] // heads)
    normed = (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (normed * weight).reshape(shape)


ROPE_BASE = 10000.0  # RoFormer's (Su et al. 2021) and Llama's


def rope(x, positions, heads: int = 1, base: float = ROPE_BASE):
    """Rotary position embedding (Su et al. 2021): in each head of x [B, n, d], coordinate
    i of the first half and i of the second half (the "rotate half" pairing of GPT-NeoX
    and Hugging Face's Llama) turn by the angle p · base^(-2i/head) at position p. The
    angles in at least float32: in bf16, p · θ loses its fractional part."""
    shape, wide = x.shape, torch.promote_types(x.dtype, torch.float32)
    half = shape[-1] // heads // 2
    freq = base ** -(torch.arange(half, device=x.device, dtype=wide) / half)
    angle = positions.to(wide)[:, None] * freq  # [n, half]
    cos, sin = angle.cos(), angle.sin()
    h = x.reshape(*shape[:-1], heads, 2, half).to(wide)
    a, b = h[..., 0, :], h[..., 1, :]
    cos, sin = cos[:, None], sin[:, None]  # [n, 1, half]: the same for every head
    out = torch.stack((a * cos - b * sin, b * cos + a * sin), -2)
    return out.reshape(shape).to(x.dtype)


def dropout(x, p, training: bool):
    """Inverted dropout (Srivastava et al. 2014), torch's."""
    return torch.nn.functional.dropout(x, float(p), training)


def positional(x, table, start: int = 0):
    """x [B, n, d] plus rows start .. start+n of a learned position table [context, d]."""
    return x + table[start:start + x.shape[1]]


def concat(*xs):
    """Items side by side along the features."""
    return torch.cat(xs, -1)


def split(x, parts, index):
    """Part `index` of `parts` equal parts of the features."""
    return x.chunk(int(parts), -1)[int(index)]


def conv(x, weight, tail):
    """Causal depthwise convolution over time. weight [d, w]; `tail` holds the
    w-1 items before this chunk (zeros at the start of a sequence), so a sequence
    cut into chunks gives what one call gives. Returns (y, new tail)."""
    w = weight.shape[1]
    full = torch.cat([tail, x], dim=1)  # [B, w-1+n, d]
    windows = full.unfold(1, w, 1)  # [B, n, d, w]: item t sees t-w+1 .. t
    y = (windows * weight).sum(-1)
    return y, full[:, full.shape[1] - (w - 1):]


def conv_tail(batch: int, weight, like):
    return like.new_zeros(batch, weight.shape[1] - 1, weight.shape[0])


def learned(value):
    return value


def arange(n):
    """`range(n)`: 0, 1, ..., n - 1. The compiler folds it, and what is computed from it, into
    a buffer of the module; this is its value as a tensor."""
    return torch.arange(int(n), dtype=torch.get_default_dtype())


def select(cond, a, b):
    return a if cond else b


def _extreme(tensors, bound: str, numbers, name: str):
    """max or min of two tensors, a tensor and a number (a clamp), or two numbers."""
    def f(a, b):
        if torch.is_tensor(a) and torch.is_tensor(b):
            return tensors(a, b)
        if torch.is_tensor(a) or torch.is_tensor(b):
            t, c = (a, b) if torch.is_tensor(a) else (b, a)
            return torch.clamp(t, **{bound: c})
        return numbers(a, b)
    return _named(f, name)


maximum = _extreme(torch.maximum, "min", max, "maximum")
minimum = _extreme(torch.minimum, "max", min, "minimum")


def embed(tokens, weight):
    return weight[tokens]


def rows(W):
    return W.shape[0] if W.dim() >= 1 else 1


def cols(W):
    return math.prod(W.shape[1:]) if W.dim() >= 2 else 1


def newton_schulz(G, steps: int = 5, eps: float = 1e-7):
    """Approximate orthogonalisation U Vᵀ of G = U S Vᵀ by the quintic Newton-Schulz
    iteration X ← aX + (bA + cA²)X, A = XXᵀ, with the coefficients (3.4445, −4.7750,
    2.0315) of Jordan et al.'s Muon. As there (and in torch.optim.Muon), X starts as
    G / max(‖G‖_F, eps), the iteration runs in bfloat16 on the wide orientation, and
    the result comes back in G's dtype. Tensors of more than two dimensions are
    flattened to [rows, rest]; vectors are returned as they are."""
    if G.dim() < 2:
        return G
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.reshape(G.shape[0], -1).bfloat16()
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / X.norm().clamp(min=eps)
    for _ in range(int(steps)):
        A = X @ X.T
        X = torch.addmm(X, torch.addmm(A, A, A, beta=b, alpha=c), X, beta=a)
    if tall:
        X = X.T
    return X.reshape(G.shape).to(G.dtype)
