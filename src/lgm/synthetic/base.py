"""The interface every synthetic-image parameterization implements."""

from __future__ import annotations

import torch
from torch import nn

from lgm.synthetic.color import decorrelation_matrix, squash, to_correlated


class SyntheticImages(nn.Module):
    """N synthetic images, stored in some parameterization, rendered into [0, 1] by sigmoid(2 s).

    A parameterization owns its growth schedule (``grow_to``) and its
    serialization (``state_tensors`` / ``load_state_tensors``): the distillation
    loop only renders, steps an optimizer over ``parameters()``, and saves.
    """

    def __init__(self, num_images: int, resolution: int, decorrelate: bool) -> None:
        super().__init__()
        self.num_images = num_images
        self.resolution = resolution
        self.decorrelate = decorrelate
        self.register_buffer("color_matrix", decorrelation_matrix(), persistent=False)

    def raw(self) -> torch.Tensor:
        """The pre-activation image S (N x 3 x R x R), before color mapping and sigmoid."""
        raise NotImplementedError

    def render(self) -> torch.Tensor:
        s = self.raw()
        if self.decorrelate:
            s = to_correlated(s, self.color_matrix)
        return squash(s)

    def grow_to(self, step: int, generator: torch.Generator) -> bool:
        """Bring the parameterization to its state for ``step``; True if parameters changed shape."""
        return False

    @property
    def levels(self) -> int:
        return 1

    def state_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError
