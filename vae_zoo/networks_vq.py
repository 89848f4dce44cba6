"""Convolutional networks to and from a grid of code vectors, for the VQ-VAE.

They subclass the :class:`~vae_zoo.networks.Encoder` and :class:`~vae_zoo.networks.Decoder`
of :mod:`vae_zoo.networks` and keep their factory signatures, so a config names them the same
way and the model supplies the first three arguments, but the latent is a grid, not a vector:

* ``VQEncoder(image_shape, latent_dim, cond_dim, ...)``: x [B, C, H, W] -> z_e [B, D, h, w],
  D = ``latent_dim`` (the code dimension), h x w = H x W halved once per ``channels`` entry
  (28x28 -> 7x7 with the default two);
* ``VQDecoder(latent_dim, out_shape, cond_dim, ...)``: z_q [B, D, h, w] -> likelihood
  parameters [B, *out_shape].

The layout follows van den Oord et al. (2017): strided 4x4 convolutions, residual blocks
(ReLU, 3x3 conv, ReLU, 1x1 conv) at the grid's resolution, a 1x1 convolution to D channels;
the decoder mirrors it with transposed convolutions. Both are unconditional.
"""

from collections.abc import Sequence

from torch import Tensor, nn

from vae_zoo.errors import ConfigError
from vae_zoo.networks import Decoder, Encoder, activation


def _check(h: int, w: int, halvings: int, cond_dim: int, res_blocks: int) -> None:
    if cond_dim:
        raise ConfigError(f"the VQ-VAE networks are unconditional, got cond_dim={cond_dim}")
    if halvings < 1:
        raise ConfigError("the VQ-VAE networks need at least one channels entry")
    if h % 2**halvings or w % 2**halvings:
        raise ConfigError(
            f"the VQ-VAE networks halve the image {halvings} times; {h}x{w} is not divisible "
            f"by {2**halvings} (use fewer channels entries)"
        )
    if res_blocks < 0:
        raise ConfigError(f"res_blocks must be >= 0, got {res_blocks}")


class ResidualBlock(nn.Module):
    """x + conv1x1(act(conv3x3(act(x)))), channels unchanged (the paper's residual block)."""

    def __init__(self, channels: int, hidden: int, act: str = "relu") -> None:
        super().__init__()
        self.net = nn.Sequential(
            activation(act),
            nn.Conv2d(channels, hidden, 3, padding=1),
            activation(act),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, h, w] -> [B, C, h, w]."""
        return x + self.net(x)


class VQEncoder(Encoder):
    """Strided convs (28x28 -> 14x14 -> 7x7), residual blocks, then a 1x1 conv to D channels."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        cond_dim: int = 0,
        channels: Sequence[int] = (32, 64),
        res_blocks: int = 1,
        act: str = "relu",
    ) -> None:
        super().__init__(image_shape, latent_dim, cond_dim)
        c, h, w = self.image_shape
        _check(h, w, len(channels), cond_dim, res_blocks)
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip([c, *channels[:-1]], channels, strict=True)):
            if i:
                layers.append(activation(act))
            layers.append(nn.Conv2d(n_in, n_out, 4, stride=2, padding=1))
        width = channels[-1]
        layers += [ResidualBlock(width, width, act) for _ in range(res_blocks)]
        layers += [activation(act), nn.Conv2d(width, latent_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """x [B, C, H, W] -> z_e [B, D, h, w] (a grid, not the (mu, logvar) of ``Encoder``)."""
        return self.net(x)


class VQDecoder(Decoder):
    """A 3x3 conv from D channels, residual blocks, then transposed convs back to the image."""

    def __init__(
        self,
        latent_dim: int,
        out_shape: tuple[int, int, int],
        cond_dim: int = 0,
        channels: Sequence[int] = (64, 32),
        res_blocks: int = 1,
        act: str = "relu",
    ) -> None:
        super().__init__(latent_dim, out_shape, cond_dim)
        c, h, w = self.out_shape
        _check(h, w, len(channels), cond_dim, res_blocks)
        width = channels[0]
        layers: list[nn.Module] = [nn.Conv2d(latent_dim, width, 3, padding=1)]
        layers += [ResidualBlock(width, width, act) for _ in range(res_blocks)]
        for n_in, n_out in zip(channels, [*channels[1:], c], strict=True):
            layers += [activation(act), nn.ConvTranspose2d(n_in, n_out, 4, stride=2, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """z_q [B, D, h, w] -> likelihood parameters [B, *out_shape]."""
        return self.net(z)
