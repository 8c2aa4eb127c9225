"""A linear memory, M(e) = W e per head: its reference (`naive`), the same formulas
head-major (`headmajor`), the chunk-parallel delta rule (`chunk`) and that rule as a
Triton kernel (`triton`)."""
