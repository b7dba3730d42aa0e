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


class HandwritingShifts(RandomAffine):
    """RandomAffine plus what other people's pens, hands, scanners and cameras change: shear and
    a smooth elastic wobble (in the same ``grid_sample``), thicker or thinner strokes, lost
    resolution, blur, sensor noise, specks and lines across the digit (ruled paper, a slip of
    the pen). For configs/handwriting.yaml.

    Every change is drawn per image from the global torch RNG in a fixed order and amount, on
    the batch's device, so seeded runs repeat and an exact resume stays exact.

    Args:
        degrees, translate, scale: as RandomAffine.
        shear: horizontal shear factor drawn from [-shear, shear].
        elastic: typical displacement of the smooth random field, in pixels.
        stroke: share of images whose strokes get thicker (a 3x3 dilation) or thinner (half of a
            3x3 erosion mixed in), half and half.
        low_resolution: share of images scanned at low resolution: area-averaged to a side in
            [10, 18] pixels, quantised to 4, 8 or 16 grey levels, scaled back up bicubically.
        blur: share of images blurred (a 5x5 Gaussian, sigma 1, mixed in at a random strength).
        noise: Gaussian noise of a standard deviation drawn from [0, noise] on every image.
        specks: share of images with up to 8% of their pixels set to black or white.
        lines: share of images crossed by a straight line 1-3 pixels wide, of random angle.
    """

    def __init__(
        self,
        degrees: float = 15.0,
        translate: float = 0.1,
        scale: tuple[float, float] = (0.75, 1.15),
        shear: float = 0.3,
        elastic: float = 0.8,
        stroke: float = 0.4,
        low_resolution: float = 0.2,
        blur: float = 0.3,
        noise: float = 0.1,
        specks: float = 0.15,
        lines: float = 0.2,
    ) -> None:
        super().__init__(degrees, translate, scale)
        self.shear, self.elastic, self.stroke = shear, elastic, stroke
        self.low_resolution, self.blur, self.noise = low_resolution, blur, noise
        self.specks, self.lines = specks, lines

    def __call__(self, images: Tensor) -> Tensor:
        def per_image() -> Tensor:  # one uniform draw in [0, 1) per image
            return torch.rand(images.shape[0], 1, 1, 1, device=images.device)

        images = F.grid_sample(images, self._grid(images), mode="bilinear", align_corners=False)

        which = per_image()
        thicker = F.max_pool2d(images, 3, stride=1, padding=1)
        thinner = (images - F.max_pool2d(-images, 3, stride=1, padding=1)) / 2  # half an erosion
        stroke = torch.where(which < self.stroke / 2, thicker, thinner)
        images = torch.where(which < self.stroke, stroke, images)

        # A low-resolution scan: the ink binned to `side` pixels (the digit, 20 of MNIST's 28, then
        # spans 7 to 13), quantised to 4, 8 or 16 grey levels, and smoothly scaled back up, as a
        # viewer shows it. The side is drawn on the CPU: one int for the batch, without a
        # host-device sync each step on a GPU.
        side = int(torch.randint(10, 19, (1,)))
        small = F.interpolate(images, size=(side, side), mode="area")
        steps = 2 ** torch.randint(2, 5, (images.shape[0], 1, 1, 1), device=images.device) - 1
        small = torch.round(small * steps) / steps
        coarse = F.interpolate(small, size=images.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
        coarse = coarse / coarse.amax(dim=(2, 3), keepdim=True).clamp(min=1e-3)  # predict stretches the greys
        images = torch.where(per_image() < self.low_resolution, coarse, images)

        strength = per_image() * (per_image() < self.blur)
        blurred = F.conv2d(images, _gaussian_kernel(images.device, images.dtype), padding=2)
        images = images + strength * (blurred - images)

        noise = per_image() * self.noise * torch.randn_like(images)
        images = (images + noise).clamp_(0, 1)

        hit = torch.rand_like(images) < per_image() * 0.08 * (per_image() < self.specks)
        images = torch.where(hit, (torch.rand_like(images) < 0.5).to(images.dtype), images)

        return torch.maximum(images, self._line(images) * (per_image() < self.lines))

    @staticmethod
    def _line(images: Tensor) -> Tensor:
        """One straight line per image: random direction, offset from the centre, width and ink."""
        count, device, side = images.shape[0], images.device, images.shape[-1]
        direction = torch.rand(count, 1, 1, 1, device=device) * math.pi
        offset = (torch.rand(count, 1, 1, 1, device=device) * 2 - 1) * (side / 3)
        width = 1 + 2 * torch.rand(count, 1, 1, 1, device=device)
        ink = 0.4 + 0.6 * torch.rand(count, 1, 1, 1, device=device)
        position = torch.arange(side, device=device, dtype=images.dtype) - (side - 1) / 2
        rows, cols = position.view(1, 1, side, 1), position.view(1, 1, 1, side)
        distance = (cols * torch.cos(direction) + rows * torch.sin(direction) - offset).abs()
        return (1 - distance / width).clamp(0, 1) * ink

    def _grid(self, images: Tensor) -> Tensor:
        """Rotation, zoom, shear and shift as one affine map, plus a smooth random displacement."""
        count, device = images.shape[0], images.device
        angle = (torch.rand(count, device=device) * 2 - 1) * math.radians(self.degrees)
        zoom = torch.empty(count, device=device).uniform_(*self.scale)
        shift = (torch.rand(count, 2, device=device) * 2 - 1) * (2 * self.translate)
        shear = (torch.rand(count, device=device) * 2 - 1) * self.shear
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # [[cos, sin], [-sin, cos]] @ [[1, shear], [0, 1]]: the rotation of RandomAffine, sheared.
        theta = torch.stack(
            [
                torch.stack([cos, cos * shear + sin, shift[:, 0]], dim=1),
                torch.stack([-sin, -sin * shear + cos, shift[:, 1]], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        # A coarse 4x4 field of displacements, smoothly upsampled: strokes bend, the digit stays.
        coarse = torch.randn(count, 2, 4, 4, device=device) * (2 * self.elastic / images.shape[-1])
        field = F.interpolate(coarse, size=images.shape[-2:], mode="bicubic", align_corners=False)
        return grid + field.permute(0, 2, 3, 1)


def _gaussian_kernel(device: torch.device, dtype: torch.dtype) -> Tensor:
    steps = torch.arange(-2, 3, device=device, dtype=dtype)
    line = torch.exp(-(steps**2) / 2)
    kernel = line[:, None] * line[None, :]
    return (kernel / kernel.sum()).view(1, 1, 5, 5)
