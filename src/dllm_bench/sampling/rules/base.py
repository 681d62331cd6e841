"""What a commit rule is: how a decoding step chooses which predicted positions to keep.

A rule owns its config key (in the `llada` section; also the row column, the
`LladaSettings` field and the keyword of `validate_decoding`), the validation of its value,
its case-id part and its column's meaning, and the selection itself. The modules of this
package import no torch (the selection only calls tensor methods), so the config check and
the report read the rules without loading torch.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from torch import Tensor

#: A problem of a decoding option: the parameter it is about, and the message.
Problem = tuple[str, str]


def finite(value: object) -> float | None:
    """``value`` as a float if it is a finite real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


class StepRule(ABC):
    """The commits of one block's steps."""

    @abstractmethod
    def select(self, confidence: Tensor, masked: Tensor, step: int) -> Tensor:
        """(B, W) bool: the masked positions to commit at ``step`` of the block, from the
        (B, W) confidences (-inf where not masked)."""

    @abstractmethod
    def block_done(self, step: int, masked: Tensor) -> bool:
        """Whether the block needs no further forward pass (``step`` forwards made, ``masked``
        its still-masked positions)."""


class ConfidenceRule(StepRule):
    """A rule that commits by confidence, with one number as its setting. The number of
    forward passes follows from the confidences (`steps` is not used): at least one per
    block, at most one per generated position, and a block ends once every row has
    committed all of it."""

    key: ClassVar[str]
    id_prefix: ClassVar[str]
    doc: ClassVar[str]

    def __init__(self, value: float) -> None:
        self.value = float(value)

    @classmethod
    @abstractmethod
    def problems(cls, value: object) -> list[Problem]:
        """What is wrong with a set value ([] when it is valid)."""

    @classmethod
    def id_part(cls, value: float) -> str:
        """The case-id part, e.g. `th0.9`."""
        return f"{cls.id_prefix}{value:g}"

    def block_done(self, step: int, masked: Tensor) -> bool:
        return not bool(masked.any())
