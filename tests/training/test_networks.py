"""Shapes of every network at two sizes, and the size rules they enforce."""
import pytest
import torch

from training.networks.cyclegan import ResnetConfig, ResnetGenerator
from training.networks.dcgan import ConditionalGenerator, DCGANConfig, ProjectionDiscriminator
from training.networks.pix2pix import PatchConfig, PatchDiscriminator, UNetConfig, UNetGenerator
from training.networks.srgan import SRDiscriminator, SRDiscriminatorConfig, SRResNet, SRResNetConfig


@pytest.mark.parametrize("size", [28, 32, 64])
def test_dcgan_shapes(size):
    cfg = DCGANConfig(latent_dim=16, num_classes=10, channels=1, image_size=size, ngf=8, ndf=8, embed_dim=4)
    g, d = ConditionalGenerator(cfg), ProjectionDiscriminator(cfg)
    z, y = torch.randn(3, 16), torch.tensor([0, 4, 9])
    x = g(z, y)
    assert x.shape == (3, 1, size, size)
    assert x.abs().max() <= 1.0  # Tanh
    assert d(x, y).shape == (3,)


def test_dcgan_minibatch_std_sees_the_batch_spread():
    cfg = DCGANConfig(latent_dim=16, image_size=32, ngf=8, ndf=8, minibatch_std=True)
    d = ProjectionDiscriminator(cfg).eval()
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    same = x[:1].expand(4, -1, -1, -1)
    # the first image's logit changes when the rest of the batch changes: D sees the spread
    assert not torch.allclose(d(x, y)[0], d(torch.cat([x[:1], same[1:]]), y)[0])
    assert d(x, y).shape == (4,)


def test_dcgan_label_changes_output():
    cfg = DCGANConfig(latent_dim=16, image_size=32, ngf=8, ndf=8)
    g = ConditionalGenerator(cfg).eval()
    z = torch.randn(1, 16)
    assert not torch.allclose(g(z, torch.tensor([0])), g(z, torch.tensor([5])))


def test_dcgan_rejects_unusable_size():
    with pytest.raises(ValueError, match="image_size"):
        ConditionalGenerator(DCGANConfig(image_size=22))


@pytest.mark.parametrize("hw", [(64, 64), (96, 160)])
def test_unet_shapes(hw):
    g = UNetGenerator(UNetConfig(in_channels=1, out_channels=3, num_downs=5, ngf=4))
    assert g(torch.randn(2, 1, *hw)).shape == (2, 3, *hw)


def test_unet_multiple_and_depth():
    assert UNetConfig(num_downs=8).multiple_of == 256
    with pytest.raises(ValueError):
        UNetGenerator(UNetConfig(num_downs=4))


@pytest.mark.parametrize("n_layers,hw,out", [(3, 256, 30), (3, 128, 14), (2, 64, 14)])
def test_patchgan_shapes(n_layers, hw, out):
    d = PatchDiscriminator(PatchConfig(in_channels=4, ndf=8, n_layers=n_layers))
    assert d(torch.randn(1, 4, hw, hw)).shape == (1, 1, out, out)


def test_patchgan_receptive_field_is_70():
    """One output logit of the 3-layer PatchGAN depends on a 70x70 input window."""
    d = PatchDiscriminator(PatchConfig(in_channels=1, ndf=4, n_layers=3)).eval()
    x = torch.zeros(1, 1, 256, 256, requires_grad=True)
    y = d(x)
    y[0, 0, 15, 15].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(0)).flatten()
    assert rows.max() - rows.min() + 1 == 70
    assert cols.max() - cols.min() + 1 == 70


@pytest.mark.parametrize("hw", [(28, 28), (64, 48)])
@pytest.mark.parametrize("blocks", [6, 9])
def test_resnet_generator_shapes(hw, blocks):
    g = ResnetGenerator(ResnetConfig(in_channels=1, out_channels=3, ngf=4, n_blocks=blocks))
    assert sum(1 for m in g.modules() if m.__class__.__name__ == "ResnetBlock") == blocks
    assert any(isinstance(m, torch.nn.ReflectionPad2d) for m in g.modules())
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in g.modules())
    assert g(torch.randn(2, 1, *hw)).shape == (2, 3, *hw)


@pytest.mark.parametrize("hw", [(24, 24), (17, 30)])
@pytest.mark.parametrize("scale", [2, 4])
def test_srresnet_shapes(hw, scale):
    g = SRResNet(SRResNetConfig(nf=8, n_blocks=2, scale=scale))
    n_shuffle = sum(1 for m in g.modules() if isinstance(m, torch.nn.PixelShuffle))
    assert n_shuffle == {2: 1, 4: 2}[scale]
    assert g(torch.randn(1, 3, *hw)).shape == (1, 3, hw[0] * scale, hw[1] * scale)


def test_srresnet_bicubic_skip_starts_at_bicubic():
    import torch.nn.functional as F
    g = SRResNet(SRResNetConfig(nf=8, n_blocks=2, scale=4, norm="none", skip="bicubic"))
    x = torch.rand(2, 3, 13, 9) * 2 - 1
    want = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
    assert torch.equal(g(x), want)  # zero-initialised tail: the residual starts at nothing
    with pytest.raises(ValueError, match="skip"):
        SRResNet(SRResNetConfig(skip="nearest"))


def test_srresnet_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        SRResNet(SRResNetConfig(scale=3))


@pytest.mark.parametrize("hw", [(96, 96), (64, 80)])
def test_sr_discriminator_any_size(hw):
    d = SRDiscriminator(SRDiscriminatorConfig(ndf=4))
    assert d(torch.randn(2, 3, *hw)).shape == (2,)


def test_dcgan_spectral_norm_and_class_head():
    """spectral_norm: D has no batch norm and its layers' largest singular value is 1; aux_classifier: class
    logits beside the real/fake score, and asking for them without the head is an error."""
    cfg = DCGANConfig(latent_dim=16, image_size=32, ngf=8, ndf=8, spectral_norm=True, aux_classifier=True)
    d = ProjectionDiscriminator(cfg)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    x, y = torch.randn(5, 1, 32, 32), torch.tensor([0, 1, 2, 3, 9])
    for _ in range(30):  # the power iteration converges in training mode
        d(x, y)
    conv = d.features[2]
    w = conv.weight.detach().flatten(1)
    assert abs(torch.linalg.matrix_norm(w, ord=2).item() - 1.0) < 0.05
    score, classes = d(x, y, with_class=True)
    assert score.shape == (5,) and classes.shape == (5, 10)
    with pytest.raises(ValueError, match="aux_classifier"):
        ProjectionDiscriminator(DCGANConfig(latent_dim=16, image_size=32, ngf=8, ndf=8))(x, y, with_class=True)


def test_unet_chroma_keeps_the_luma_and_rebuilds_rgb():
    """output: chroma: the image's own Cb/Cr give back the RGB image (up to 8-bit rounding of the luma), and
    whatever the chroma, the output's luma is the input's wherever the colour is in gamut."""
    import numpy as np
    from PIL import Image

    from training.networks.pix2pix import luma_chroma_to_rgb

    rng = torch.Generator().manual_seed(0)
    rgb = (torch.rand(1, 3, 16, 24, generator=rng) * 0.6 + 0.2)  # in gamut, away from the clip
    im = Image.fromarray((rgb[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    rgb8 = torch.from_numpy(np.asarray(im, dtype="float32") / 255).permute(2, 0, 1)[None]
    y = torch.from_numpy(np.asarray(im.convert("L"), dtype="float32") / 255)[None, None]
    r, g, b = rgb8[:, 0:1], rgb8[:, 1:2], rgb8[:, 2:3]
    cb, cr = (b - y) / 1.772, (r - y) / 1.402
    out = (luma_chroma_to_rgb(y * 2 - 1, torch.cat([cb, cr], 1) * 2) + 1) / 2
    assert (out - rgb8).abs().max() < 3 / 255
    net = UNetGenerator(UNetConfig(in_channels=1, out_channels=3, num_downs=5, ngf=4, output="chroma")).eval()
    x = torch.rand(2, 1, 64, 32) * 0.4 - 0.2  # mid-gray luma: every chroma the tanh allows stays near gamut
    o = (net(x) + 1) / 2
    assert o.shape == (2, 3, 64, 32)
    luma = 0.299 * o[:, 0:1] + 0.587 * o[:, 1:2] + 0.114 * o[:, 2:3]
    assert (luma - (x + 1) / 2).abs().max() < 1e-4
    with pytest.raises(ValueError, match="chroma"):
        UNetConfig(in_channels=3, out_channels=3, output="chroma")
