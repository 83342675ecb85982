"""The interface every synthetic-image parameterization implements."""

from __future__ import annotations

import torch
from torch import nn

from lgm.synthetic.color import decorrelation_matrix, squash, to_correlated, unsquash


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

    def target_raw(self, images: torch.Tensor) -> torch.Tensor:
        """The pre-activation S whose rendering is ``images`` (N x C x R x R in [0, 1], C = 1 or 3)."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if images.shape != (self.num_images, 3, self.resolution, self.resolution):
            raise ValueError(f"init images of shape {tuple(images.shape)} do not fit {self.num_images} x 3 x "
                             f"{self.resolution} x {self.resolution}")
        s = unsquash(images.to(self.color_matrix.device).float())
        if self.decorrelate:
            s = to_correlated(s, torch.linalg.inv(self.color_matrix.double()).float())
        return s

    def init_from_images(self, images: torch.Tensor) -> None:
        """Start from given images (e.g. real ones of each class) instead of noise (SPEC §3, ours)."""
        raise NotImplementedError

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
