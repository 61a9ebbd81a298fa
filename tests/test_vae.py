import pytest
import torch

import parscale_ear as pe
from parscale_ear.vae import LiteVAE, LiteVAEConfig, haar_dwt, haar_idwt, haar_wavedec, haar_waverec


def test_haar_inverse_is_exact_and_preserves_energy():
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    y = haar_dwt(x)
    assert y.shape == (3, 12, 8, 8)
    torch.testing.assert_close(haar_idwt(y), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(y.pow(2).sum(), x.pow(2).sum(), rtol=1e-12, atol=0)


def test_multilevel_haar_roundtrip_and_energy():
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    levels = haar_wavedec(x, 3)
    assert [tuple(l.shape[-2:]) for l in levels] == [(16, 16), (8, 8), (4, 4)]
    torch.testing.assert_close(haar_waverec(levels), x, rtol=0, atol=1e-12)
    # energy = all detail bands + the last LL band
    energy = sum(l[:, 1:].pow(2).sum() for l in levels) + levels[-1][:, :1].pow(2).sum()
    torch.testing.assert_close(energy, x.pow(2).sum(), rtol=1e-12, atol=0)


def test_haar_of_constant_image_has_no_detail():
    y = haar_dwt(torch.full((1, 1, 4, 4), 0.5))
    assert torch.all(y[:, 1:] == 0) and torch.allclose(y[:, 0], torch.ones(1, 2, 2))


@pytest.mark.parametrize("name,shape,latent", [("fmnist-32", (2, 1, 32, 32), (2, 4, 16, 16)), ("lite-256", (1, 3, 256, 256), (1, 32, 16, 16))])
def test_preset_geometries(name, shape, latent):
    vae = LiteVAE(pe.get_config(name).vae).eval()
    x = torch.rand(shape) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == latent
        out = vae.decode(z)
    assert out.shape == shape and torch.isfinite(out).all()


def test_latent_scale_scales_encode_and_decode_undoes_it():
    torch.manual_seed(0)
    vae = LiteVAE(pe.get_config("tiny-32").vae).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        z1, y1 = vae.encode(x), vae.decode(vae.encode(x))
        vae.config.latent_scale = 2.5
        z2, y2 = vae.encode(x), vae.decode(vae.encode(x))
    torch.testing.assert_close(z2, 2.5 * z1)
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)


def test_sampled_encoding_is_seeded():
    vae = LiteVAE(pe.get_config("tiny-32").vae).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    a = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    b = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, vae.encode(x))


@pytest.mark.parametrize(
    "bad,exc,match",
    [
        (torch.zeros(2, 3, 32, 32), ValueError, r"expected shape \(B, 1, 32, 32\)"),
        (torch.zeros(2, 1, 28, 28), ValueError, r"expected shape"),
        (torch.zeros(1, 32, 32), ValueError, r"expected shape"),
        (torch.full((1, 1, 32, 32), float("nan")), ValueError, "NaN"),
        (torch.full((1, 1, 32, 32), 3.0), ValueError, r"\[-1, 1\]"),
        (torch.zeros(1, 1, 32, 32, dtype=torch.uint8), TypeError, "floating-point"),
        ([[0.0]], TypeError, "torch.Tensor"),
    ],
)
def test_encode_rejects_bad_images(bad, exc, match):
    vae = LiteVAE(pe.get_config("tiny-32").vae)
    with pytest.raises(exc, match=match):
        vae.encode(bad)


def test_decode_rejects_wrong_latent_shape():
    vae = LiteVAE(pe.get_config("tiny-32").vae)
    with pytest.raises(ValueError, match=r"expected shape \(B, 4, 16, 16\)"):
        vae.decode(torch.zeros(1, 4, 8, 8))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(image_size=32, latent_size=12), "power of two"),
        (dict(decoder_channels=(8,)), "decoder_channels needs 2"),
        (dict(in_channels=2), "in_channels"),
        (dict(dwt_levels=6), "dwt_levels"),
    ],
)
def test_bad_vae_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LiteVAEConfig(**kwargs)
