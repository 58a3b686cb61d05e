"""Generators of inputs from noise, for data-free distillation (DAFL, DFAD).

A DCGAN-style generator (Radford et al. 2016) as in DAFL (Chen et al. 2019, their
generator for MNIST/CIFAR): ``z`` -> linear -> a small feature map -> (upsample x2 ->
conv -> BatchNorm -> LeakyReLU) blocks -> conv to the data's channels -> tanh -> BatchNorm
without affine parameters (so generated inputs have the zero-mean, unit-variance scale of
normalised data). :func:`build_generator` makes one for an image shape ``(C, H, W)``
(e.g. digits' 1x8x8) or a signal shape ``(C, L)`` (MNIST-1D's 1x40); the number of
upsampling blocks is chosen so the spatial size comes out exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from kdforge.core.errors import ConfigError

_LAYERS = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d)}


def _upsamplings(sizes: Sequence[int], most: int) -> int:
    """How many x2 upsamplings every spatial size allows (at most ``most``)."""
    count = 0
    while count < most and all(s % (2 ** (count + 1)) == 0 and s // 2 ** (count + 1) >= 2
                               for s in sizes):
        count += 1
    return count


class Generator(nn.Module):
    """``(B, z_dim)`` noise -> ``(B, *shape)`` inputs; see the module docstring.

    Args:
        shape: the generated input's shape, ``(C, L)`` or ``(C, H, W)``.
        z_dim: the noise dimension.
        width: channels of the first feature map (halved in the last block).
        upsamplings: at most this many x2 upsampling blocks (fewer if the size forbids).
    """

    def __init__(self, shape: Sequence[int], z_dim: int = 100, width: int = 128,
                 upsamplings: int = 2) -> None:
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if len(shape) - 1 not in _LAYERS or min(shape) < 1:
            raise ConfigError(f"a generator makes (C, L) signals or (C, H, W) images; got "
                              f"input shape {shape}")
        if z_dim < 1 or width < 2:
            raise ConfigError(f"generator: z_dim >= 1 and width >= 2 needed, got {z_dim}, "
                              f"{width}")
        conv, norm = _LAYERS[len(shape) - 1]
        channels, sizes = shape[0], shape[1:]
        ups = _upsamplings(sizes, upsamplings)
        self.shape, self.z_dim = shape, z_dim
        self.start = (width, *(s // 2 ** ups for s in sizes))
        numel = 1
        for s in self.start:
            numel *= s
        self.project = nn.Linear(z_dim, numel)
        layers: list[nn.Module] = [norm(width)]
        c = width
        for i in range(ups):
            out = width if i < ups - 1 else max(width // 2, 1)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       conv(c, out, 3, padding=1), norm(out), nn.LeakyReLU(0.2)]
            c = out
        if ups == 0:
            layers += [conv(c, c, 3, padding=1), norm(c), nn.LeakyReLU(0.2)]
        layers += [conv(c, channels, 3, padding=1), nn.Tanh(), norm(channels, affine=False)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.body(self.project(z.flatten(1)).view(z.shape[0], *self.start))


def build_generator(input_shape: Sequence[int], z_dim: int = 100, width: int = 128) -> Generator:
    """The generator for a data set's ``input_shape``."""
    return Generator(input_shape, z_dim=z_dim, width=width)


__all__ = ["Generator", "build_generator"]
