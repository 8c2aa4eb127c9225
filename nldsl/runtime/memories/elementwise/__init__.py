"""An elementwise memory (optimizers only): θ shaped like the parameter, read as θ or
applied as θ⊙k. Its reference (`naive`) is its only form."""
