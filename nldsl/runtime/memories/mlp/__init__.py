"""A 2-layer mlp memory, M(e) = W1 σ(W2 e + b2) + b1 (+ e) per head: its reference
(`naive`), the same formulas head-major (`headmajor`), a period as one autograd node
(`period`) and a period as one Triton program (`triton`)."""
