"""Augmentation of whole batches on the training device: one random affine map per image."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class RandomAffine:
    """Rotate, scale and shift every image of a (B, C, H, W) float batch by its own random amounts.

    One ``affine_grid`` + ``grid_sample`` call for the batch, on whatever device the batch is
    on: no per-image PIL work and no host round trip. Draws from the global torch RNG, so a
    seeded run is repeatable and an exact resume (which restores that RNG) stays exact.
    Expects a black background (0) before normalisation: uncovered borders are filled with 0.

    Args:
        degrees: rotation drawn from [-degrees, degrees].
        translate: shift drawn from [-translate, translate] of the image size, per axis.
        scale: zoom factor drawn from [scale[0], scale[1]].
    """

    def __init__(
        self, degrees: float = 10.0, translate: float = 0.1, scale: tuple[float, float] = (0.9, 1.1)
    ) -> None:
        self.degrees, self.translate, self.scale = degrees, translate, scale

    def __call__(self, images: Tensor) -> Tensor:
        count, device = images.shape[0], images.device
        angle = (torch.rand(count, device=device) * 2 - 1) * math.radians(self.degrees)
        zoom = torch.empty(count, device=device).uniform_(*self.scale)
        # affine_grid's coordinates run from -1 to 1, so a shift of f image sizes is 2f.
        shift = (torch.rand(count, 2, device=device) * 2 - 1) * (2 * self.translate)
        # theta maps output coordinates to input ones: the inverse rotation, divided by the zoom.
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [torch.stack([cos, sin, shift[:, 0]], dim=1), torch.stack([-sin, cos, shift[:, 1]], dim=1)], dim=1
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
