"""Encoder and decoder networks, swappable from the config.

The model builds its networks itself, because only it knows the latent size, the condition
size and the decoder output shape its likelihood needs. A config therefore names a network
class and its own knobs (``class_path``/``init_args``); the model supplies the first three
arguments:

* ``Encoder(image_shape, latent_dim, cond_dim, ...)``: x [B, C, H, W], c [B, K] or None ->
  (mu [B, D], logvar [B, D]) of q(z|x[,c]).
* ``Decoder(latent_dim, out_shape, cond_dim, ...)``: z [B, D], c [B, K] or None ->
  likelihood parameters [B, *out_shape].
"""

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from vae_zoo.errors import ConfigError

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of ``relu, gelu, silu, elu, leaky_relu, tanh``)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}"
        ) from None


def mlp(sizes: Sequence[int], act: str, final_act: bool = False) -> nn.Sequential:
    """Linear layers with ``act`` between them: sizes [a, b, c] -> a->b, act, b->c."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_act:
            layers.append(activation(act))
    return nn.Sequential(*layers)


def _with_condition(h: Tensor, c: Tensor | None) -> Tensor:
    return h if c is None else torch.cat([h, c.to(h.dtype)], dim=1)


class Encoder(nn.Module):
    """Base class of encoders: ``forward(x, c=None) -> (mu, logvar)``, each [B, latent_dim]."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, cond_dim: int = 0):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        self.cond_dim = cond_dim


class Decoder(nn.Module):
    """Base class of decoders: ``forward(z, c=None) -> params`` of shape [B, *out_shape]."""

    def __init__(self, latent_dim: int, out_shape: tuple[int, int, int], cond_dim: int = 0):
        super().__init__()
        self.latent_dim = latent_dim
        self.out_shape = tuple(out_shape)
        self.cond_dim = cond_dim


class MLPEncoder(Encoder):
    """Fully connected encoder: flatten x, append c, hidden layers, then a (mu, logvar) head."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        cond_dim: int = 0,
        hidden_dims: Sequence[int] = (512, 256),
        act: str = "relu",
    ) -> None:
        super().__init__(image_shape, latent_dim, cond_dim)
        sizes = [math.prod(self.image_shape) + cond_dim, *hidden_dims, 2 * latent_dim]
        self.net = mlp(sizes, act)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """[B, C, H, W] (+ [B, K]) -> ([B, D], [B, D])."""
        mu, logvar = self.net(_with_condition(x.flatten(1), c)).chunk(2, dim=1)
        return mu, logvar


class MLPDecoder(Decoder):
    """Fully connected decoder: [z, c] -> hidden layers -> likelihood parameters."""

    def __init__(
        self,
        latent_dim: int,
        out_shape: tuple[int, int, int],
        cond_dim: int = 0,
        hidden_dims: Sequence[int] = (256, 512),
        act: str = "relu",
    ) -> None:
        super().__init__(latent_dim, out_shape, cond_dim)
        self.net = mlp([latent_dim + cond_dim, *hidden_dims, math.prod(self.out_shape)], act)

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """[B, D] (+ [B, K]) -> [B, *out_shape]."""
        return self.net(_with_condition(z, c)).view(-1, *self.out_shape)


def _check_divisible(h: int, w: int, n: int) -> None:
    if h % 2**n or w % 2**n:
        raise ConfigError(
            f"conv networks halve the image {n} times; {h}x{w} is not divisible by {2**n} "
            "(use fewer channels entries or an MLP encoder/decoder)"
        )


def _halving_padding(kernel_size: int) -> int:
    """Padding that makes a stride-2 convolution of this kernel halve an even size exactly."""
    if kernel_size < 1:
        raise ConfigError(f"kernel_size must be >= 1, got {kernel_size}")
    return (kernel_size - 1) // 2


class ConvEncoder(Encoder):
    """Strided-conv encoder (28x28 -> 14x14 -> 7x7), then a hidden layer and a (mu, logvar) head.

    The condition is appended after the convolutions, where it costs one linear input per class.
    ``kernel_size`` is that of every stride-2 convolution (4 by default; 3 is the Keras
    tutorial's), padded so that each one halves the image exactly.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        latent_dim: int,
        cond_dim: int = 0,
        channels: Sequence[int] = (32, 64),
        hidden_dim: int = 256,
        act: str = "relu",
        kernel_size: int = 4,
    ) -> None:
        super().__init__(image_shape, latent_dim, cond_dim)
        c, h, w = self.image_shape
        _check_divisible(h, w, len(channels))
        pad = _halving_padding(kernel_size)
        layers: list[nn.Module] = []
        for n_in, n_out in zip([c, *channels[:-1]], channels, strict=True):
            layers += [nn.Conv2d(n_in, n_out, kernel_size, stride=2, padding=pad), activation(act)]
        self.conv = nn.Sequential(*layers, nn.Flatten())
        flat = channels[-1] * (h // 2 ** len(channels)) * (w // 2 ** len(channels))
        self.head = mlp([flat + cond_dim, hidden_dim, 2 * latent_dim], act)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """[B, C, H, W] (+ [B, K]) -> ([B, D], [B, D])."""
        mu, logvar = self.head(_with_condition(self.conv(x), c)).chunk(2, dim=1)
        return mu, logvar


class ConvDecoder(Decoder):
    """Linear layers to a 7x7 feature map, then transposed convs back to 28x28.

    Default (``out_kernel_size=None``): the feature map has ``channels[0]`` channels and each
    stride-2 transposed conv goes to the next entry of ``channels``, the last one to the
    likelihood parameters. With ``out_kernel_size`` set, every entry of ``channels`` is the
    output of one stride-2 transposed conv (from ``channels[0]`` feature-map channels) and a
    stride-1 transposed conv of that kernel makes the parameters, as in the Keras tutorial's
    decoder. ``hidden_dim=None`` maps z to the feature map with one linear layer.
    """

    def __init__(
        self,
        latent_dim: int,
        out_shape: tuple[int, int, int],
        cond_dim: int = 0,
        channels: Sequence[int] = (64, 32),
        hidden_dim: int | None = 256,
        act: str = "relu",
        kernel_size: int = 4,
        out_kernel_size: int | None = None,
    ) -> None:
        super().__init__(latent_dim, out_shape, cond_dim)
        c, h, w = self.out_shape
        _check_divisible(h, w, len(channels))
        self.start = (channels[0], h // 2 ** len(channels), w // 2 ** len(channels))
        hidden = [] if hidden_dim is None else [hidden_dim]
        self.fc = mlp([latent_dim + cond_dim, *hidden, math.prod(self.start)], act, final_act=True)
        pad = _halving_padding(kernel_size)
        # output_padding completes the doubling when the kernel is odd (3: pad 1, out-pad 1)
        up = {"stride": 2, "padding": pad, "output_padding": 2 + 2 * pad - kernel_size}
        if out_kernel_size is None:
            sizes = list(zip(channels, [*channels[1:], c], strict=True))
        else:
            sizes = list(zip([channels[0], *channels[:-1]], channels, strict=True))
        layers: list[nn.Module] = []
        for n_in, n_out in sizes:
            layers += [nn.ConvTranspose2d(n_in, n_out, kernel_size, **up), activation(act)]
        if out_kernel_size is not None:
            if out_kernel_size < 1 or out_kernel_size % 2 == 0:
                raise ConfigError(
                    f"out_kernel_size must be odd and >= 1 to keep the image size, got "
                    f"{out_kernel_size}"
                )
            out_pad = (out_kernel_size - 1) // 2
            layers.append(nn.ConvTranspose2d(channels[-1], c, out_kernel_size, padding=out_pad))
        else:
            layers = layers[:-1]
        self.deconv = nn.Sequential(*layers)  # no activation on the likelihood parameters

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """[B, D] (+ [B, K]) -> [B, *out_shape]."""
        return self.deconv(self.fc(_with_condition(z, c)).view(-1, *self.start))


EncoderFactory = Callable[[tuple[int, int, int], int, int], Encoder]
DecoderFactory = Callable[[int, tuple[int, int, int], int], Decoder]
