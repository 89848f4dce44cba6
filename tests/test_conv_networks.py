"""The conv networks' options: the Keras tutorial's layers, and today's defaults unchanged."""

import pytest
import torch
from torch import nn

from vae_zoo.errors import ConfigError
from vae_zoo.networks import ConvDecoder, ConvEncoder

SHAPE = (1, 28, 28)


def _layers(module: nn.Module) -> list[tuple]:
    """(type, in, out, kernel, stride, padding, output_padding) of every conv-like layer."""
    out = []
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            extra = m.output_padding if isinstance(m, nn.ConvTranspose2d) else None
            out.append((type(m).__name__, m.in_channels, m.out_channels, m.kernel_size,
                        m.stride, m.padding, extra))
        elif isinstance(m, nn.Linear):
            out.append(("Linear", m.in_features, m.out_features))
    return out


def test_defaults_build_the_networks_of_every_existing_config() -> None:
    # the layers (and so the state_dict keys and shapes) every existing checkpoint was saved with
    enc, dec = ConvEncoder(SHAPE, 32, 10), ConvDecoder(32, SHAPE, 10)
    assert _layers(enc) == [
        ("Conv2d", 1, 32, (4, 4), (2, 2), (1, 1), None),
        ("Conv2d", 32, 64, (4, 4), (2, 2), (1, 1), None),
        ("Linear", 64 * 7 * 7 + 10, 256),
        ("Linear", 256, 64),
    ]
    assert _layers(dec) == [
        ("Linear", 32 + 10, 256),
        ("Linear", 256, 64 * 7 * 7),
        ("ConvTranspose2d", 64, 32, (4, 4), (2, 2), (1, 1), (0, 0)),
        ("ConvTranspose2d", 32, 1, (4, 4), (2, 2), (1, 1), (0, 0)),
    ]
    assert list(dec.state_dict()) == [
        "fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias",
        "deconv.0.weight", "deconv.0.bias", "deconv.2.weight", "deconv.2.bias",
    ]


def test_keras_options_build_its_layers_and_keep_the_image_size() -> None:
    enc = ConvEncoder(SHAPE, 2, channels=(32, 64), hidden_dim=16, kernel_size=3)
    dec = ConvDecoder(2, SHAPE, channels=(64, 32), hidden_dim=None, kernel_size=3,
                      out_kernel_size=3)
    assert _layers(dec) == [
        ("Linear", 2, 7 * 7 * 64),
        ("ConvTranspose2d", 64, 64, (3, 3), (2, 2), (1, 1), (1, 1)),
        ("ConvTranspose2d", 64, 32, (3, 3), (2, 2), (1, 1), (1, 1)),
        ("ConvTranspose2d", 32, 1, (3, 3), (1, 1), (1, 1), (0, 0)),
    ]
    mu, logvar = enc(torch.rand(3, *SHAPE))
    assert mu.shape == logvar.shape == (3, 2)
    assert dec(mu).shape == (3, *SHAPE)
    # the output layer gives logits: no activation after it
    assert isinstance(list(dec.deconv)[-1], nn.ConvTranspose2d)


@pytest.mark.parametrize("kernel", [2, 3, 4, 5])
def test_every_kernel_size_halves_and_doubles_exactly(kernel: int) -> None:
    enc = ConvEncoder(SHAPE, 4, kernel_size=kernel)
    dec = ConvDecoder(4, (2, 28, 28), kernel_size=kernel)
    assert enc.conv(torch.rand(2, *SHAPE)).shape == (2, 64 * 7 * 7)
    assert dec(torch.randn(2, 4)).shape == (2, 2, 28, 28)


def test_bad_kernel_sizes_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="out_kernel_size must be odd"):
        ConvDecoder(2, SHAPE, out_kernel_size=4)
    with pytest.raises(ConfigError, match="kernel_size must be >= 1"):
        ConvEncoder(SHAPE, 2, kernel_size=0)
