"""An attention memory: the keys and values it has appended, read by causal softmax
attention. Its reference (`naive`) is its only form; the fused path uses it too."""
