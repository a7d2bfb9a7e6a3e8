"""The default decoder: the best-ranked known action, as it was logged."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import DecodeContext, Reply

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["NearestNeighbourDecoder"]


class NearestNeighbourDecoder:
    """Replies with the known action nearest to the prediction (``context.candidates[0]``).

    An action embedding holds no sentence, but it does say which known action it is
    closest to; this is the offline answer that needs no generator.
    """

    name = "retrieval"

    def __call__(self, prediction: "Tensor", context: DecodeContext) -> Reply:
        return Reply(text=context.candidates[0][0], source=self.name)
