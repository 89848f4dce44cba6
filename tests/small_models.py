"""The small model settings and images the variant unit tests share (8x8 images, MLPs of 16)."""

import functools

import torch
from torch import Tensor

from vae_zoo.networks import MLPDecoder, MLPEncoder

#: networks and image shape of a small model; a test adds latent_dim and its variant's settings
SMALL_NETS = {
    "image_shape": (1, 8, 8),
    "encoder": functools.partial(MLPEncoder, hidden_dims=(16,)),
    "decoder": functools.partial(MLPDecoder, hidden_dims=(16,)),
}
#: the usual small model: SMALL_NETS with a 3-D latent
SMALL = {"latent_dim": 3, **SMALL_NETS}


def binary_images(n: int) -> Tensor:
    """n random binary 8x8 images, each pixel on with probability 0.3: [n, 1, 8, 8]."""
    return torch.bernoulli(torch.full((n, 1, 8, 8), 0.3))
