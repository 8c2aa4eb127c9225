"""Errors the runtime raises about a model's own numbers (not about a spec)."""

# the two places a model gets its inner clip from
CLIP_HINT = ("lower the inner rate, or clip inner updates (inner_clip=X in nldsl.compile, "
             "--inner-clip X in nldsl train)")


class NonFiniteError(FloatingPointError):
    """A NaN or Inf appeared in a fast state: names the level, the memory and the token."""

    def __init__(self, level: str, memory: str, token: int, sequence: int, hint: str = ""):
        self.level, self.memory, self.token, self.sequence = level, memory, token, sequence
        super().__init__(f"level `{level}`, memory `{memory}`: NaN or Inf in the fast state after the update at "
                         f"token {token} (sequence {sequence} of the batch); {hint or CLIP_HINT}")
