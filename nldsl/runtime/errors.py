"""Errors the runtime raises about a model's own numbers (not about a spec)."""

# the two places a model gets its inner clip from
CLIP_HINT = ("lower the inner rate, or clip inner updates (inner_clip=X in nldsl.compile, "
             "--inner-clip X in nldsl train)")


class PositionError(IndexError):
    """A token beyond the positions a model has learned vectors for (`positional`)."""

    def __init__(self, position: int, positions: int):
        self.position, self.positions = position, positions
        super().__init__(f"token position {position} is beyond the {positions} positions the model has learned "
                         f"vectors for (`positional`, its `context`): give it at most {positions} tokens a sequence")


class NonFiniteError(FloatingPointError):
    """A NaN or Inf appeared in a fast state: names the level, the memory and the token."""

    def __init__(self, level: str, memory: str, token: int, sequence: int, hint: str = ""):
        self.level, self.memory, self.token, self.sequence = level, memory, token, sequence
        super().__init__(f"level `{level}`, memory `{memory}`: NaN or Inf in the fast state after the update at "
                         f"token {token} (sequence {sequence} of the batch); {hint or CLIP_HINT}")


class NonFiniteLogits(FloatingPointError):
    """A prediction with a NaN or Inf (or no possible token) while generating."""

    def __init__(self, seen: int):
        self.seen = seen
        super().__init__(f"the model's prediction after {seen} tokens is NaN or Inf: its outputs are not finite")
