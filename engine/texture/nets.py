"""Networks of the learned texture models, plain PyTorch (no custom CUDA ops), all scriptable.

* A StyleGAN2-style generator (``StyleGenerator``): a mapping network z -> w, a learned constant
  4x4 input, per resolution two modulated/demodulated 3x3 convolutions with per-pixel noise, and
  skip outputs (a modulated 1x1 ``toRGB`` per resolution, upsampled and summed). Weights use the
  equalised learning rate (stored ~N(0, 1), scaled at run time).
* Its residual discriminator (``ResidualDiscriminator``): ``fromRGB`` at full resolution, residual
  blocks down to 4x4, minibatch standard deviation, two dense layers. It takes 4 channels: the UV
  image multiplied by a visibility mask, and the mask.
* A small masked convolutional VAE (``VAEEncoder``, ``VAEDecoder``): the encoder reads a partial UV
  (albedo x weight and the weight) and gives a latent's mean and log variance; the decoder maps a
  latent to a UV image as a residual over the training data's weighted mean.

Images are (B, 3, H, W), row 0 = the top of the atlas, as the generator checkpoint format wants.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn



def channels_at(res: int, base: int, cap: int) -> int:
    """Feature maps at a resolution: ``base / res``, at most ``cap``, at least 8."""
    return int(max(8, min(cap, base // res)))


def check_res(res: int) -> int:
    """The resolution as log2; a power of two from 8 up."""
    k = int(round(math.log2(res))) if res > 0 else 0
    if res < 8 or 2 ** k != res:
        raise ValueError(f"the resolution must be a power of two of at least 8, got {res}")
    return k


class EqLinear(nn.Module):
    """Dense layer with the equalised learning rate; optional leaky ReLU (gain sqrt 2)."""

    def __init__(self, fan_in: int, fan_out: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 act: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((fan_out,), float(bias_init) / lr_mul))
        self.scale = lr_mul / math.sqrt(fan_in)
        self.lr_mul = float(lr_mul)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        if self.act:
            x = F.leaky_relu(x, 0.2) * 1.4142135623730951  # sqrt 2
        return x


class EqConv2d(nn.Module):
    """Convolution with the equalised learning rate; optional leaky ReLU and 2x average-pool down."""

    def __init__(self, cin: int, cout: int, k: int, bias: bool = True, act: bool = True,
                 down: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.scale = 1.0 / math.sqrt(cin * k * k)
        self.pad = k // 2
        self.act = act
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.scale, self.bias, padding=self.pad)
        if self.down:
            x = F.avg_pool2d(x, 2)
        if self.act:
            x = F.leaky_relu(x, 0.2) * 1.4142135623730951  # sqrt 2
        return x


class Mapping(nn.Module):
    """z (B, z_dim) -> w (B, w_dim): pixel norm, then dense layers at a 100x lower learning rate.
    ``w_avg`` (the running mean of w while training) is the truncation centre."""

    def __init__(self, z_dim: int, w_dim: int, layers: int = 4, lr_mul: float = 0.01):
        super().__init__()
        self.net = nn.ModuleList([EqLinear(z_dim if i == 0 else w_dim, w_dim, lr_mul=lr_mul, act=True)
                                  for i in range(layers)])
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z * torch.rsqrt((z * z).mean(1, keepdim=True) + 1e-8)
        for layer in self.net:
            x = layer(x)
        return x


class ModConv(nn.Module):
    """Modulated convolution: the style scales the input channels, the weight is demodulated so
    each output has unit expected variance. Done as x * s -> conv -> * d (one shared-weight
    convolution, which cuDNN runs well at any batch) rather than a grouped per-sample weight."""

    def __init__(self, cin: int, cout: int, k: int, w_dim: int, demod: bool = True, up: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.affine = EqLinear(w_dim, cin, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(cin * k * k)
        self.pad = k // 2
        self.demod = demod
        self.up = up

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.affine(w)                                                  # (B, cin)
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        weight = self.weight * self.scale
        x = F.conv2d(x * s[:, :, None, None].to(x.dtype), weight, padding=self.pad)
        if self.demod:
            # sum_{i,k} (w_oik s_bi)^2 = (s^2) @ (sum_k w_oik^2)^T, in float32 (fp16 overflows)
            d = torch.rsqrt((s.float() ** 2) @ (weight.float() ** 2).sum([2, 3]).t() + 1e-8)
            x = x * d[:, :, None, None].to(x.dtype)
        return x


class StyledLayer(nn.Module):
    """ModConv + per-pixel noise (learned strength) + bias + leaky ReLU.

    ``noise_mode``: 0 = fresh noise each call (training), 1 = the fixed ``noise_const`` (exported
    generators: a latent then gives one image), 2 = none."""

    def __init__(self, cin: int, cout: int, w_dim: int, res: int, up: bool = False):
        super().__init__()
        self.conv = ModConv(cin, cout, 3, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.register_buffer("noise_const", torch.randn(1, 1, res, res))
        self.noise_mode = 0

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.conv(x, w)
        if self.noise_mode == 0:
            x = x + torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device,
                                dtype=x.dtype) * self.noise_strength.to(x.dtype)
        elif self.noise_mode == 1:
            x = x + self.noise_const.to(x.dtype) * self.noise_strength.to(x.dtype)
        x = x + self.bias.to(x.dtype)[None, :, None, None]
        return F.leaky_relu(x, 0.2) * 1.4142135623730951  # sqrt 2


class ToRGB(nn.Module):
    def __init__(self, cin: int, w_dim: int):
        super().__init__()
        self.conv = ModConv(cin, 3, 1, w_dim, demod=False)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias.to(x.dtype)[None, :, None, None]


class SynthesisBlock(nn.Module):
    """One resolution: (upsample +) two styled convolutions, and its skip output added to the
    upsampled image so far."""

    def __init__(self, cin: int, cout: int, w_dim: int, res: int, first: bool = False):
        super().__init__()
        self.first = first
        self.conv0 = StyledLayer(cin, cout, w_dim, res, up=not first)
        self.conv1 = StyledLayer(cout, cout, w_dim, res)
        self.torgb = ToRGB(cout, w_dim)

    def forward(self, x: torch.Tensor, img: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv0(x, w)
        x = self.conv1(x, w)
        y = self.torgb(x, w)
        if self.first:
            img = y
        else:
            img = F.interpolate(img, scale_factor=2.0, mode="bilinear", align_corners=False) + y
        return x, img


class StyleGenerator(nn.Module):
    """z (B, z_dim) -> image (B, 3, res, res) in about [-1, 1] (the training data's range).

    ``forward(z, psi)`` returns the images and w (the path length regulariser needs w); psi
    truncates in w space towards ``w_avg`` (psi = 1: none)."""

    def __init__(self, z_dim: int, res: int, w_dim: int = 256, mapping_layers: int = 4,
                 channel_base: int = 4096, channel_max: int = 256):
        super().__init__()
        top = check_res(res)
        self.z_dim, self.w_dim, self.res = int(z_dim), int(w_dim), int(res)
        self.mapping = Mapping(z_dim, w_dim, mapping_layers)
        c4 = channels_at(4, channel_base, channel_max)
        self.const = nn.Parameter(torch.randn(1, c4, 4, 4))
        blocks = [SynthesisBlock(c4, c4, w_dim, 4, first=True)]
        cin = c4
        for k in range(3, top + 1):
            r = 2 ** k
            cout = channels_at(r, channel_base, channel_max)
            blocks.append(SynthesisBlock(cin, cout, w_dim, r))
            cin = cout
        self.blocks = nn.ModuleList(blocks)

    def synthesis(self, w: torch.Tensor) -> torch.Tensor:
        x = self.const.expand(w.shape[0], -1, -1, -1)
        img = torch.zeros(w.shape[0], 3, 4, 4, device=w.device, dtype=w.dtype)
        for block in self.blocks:
            x, img = block(x, img, w)
        return img

    def forward(self, z: torch.Tensor, psi: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, w); while training, also moves ``w_avg`` towards this batch's mean w."""
        w = self.mapping(z)
        if self.training:
            with torch.no_grad():
                self.mapping.w_avg.copy_(w.detach().float().mean(0).lerp(self.mapping.w_avg, 0.995))
        if psi != 1.0:
            w = self.mapping.w_avg + psi * (w - self.mapping.w_avg)
        return self.synthesis(w), w

    def set_noise_mode(self, mode: int) -> None:
        for m in self.modules():
            if isinstance(m, StyledLayer):
                m.noise_mode = int(mode)


class ExportedGenerator(nn.Module):
    """What a GAN checkpoint holds: the (EMA) generator with fixed noise and a w-space truncation
    ``psi`` baked in; forward(z (B, z_dim)) -> (B, 3, res, res) in [-1, 1], row 0 = top."""

    def __init__(self, g: StyleGenerator, psi: float = 1.0):
        super().__init__()
        self.g = g
        self.g.set_noise_mode(1)
        self.psi = float(psi)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.g.mapping(z.float())
        w = self.g.mapping.w_avg + self.psi * (w - self.g.mapping.w_avg)
        return self.g.synthesis(w).clamp(-1.0, 1.0)


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convolutions, the second halving the size, plus a 1x1 skip; summed / sqrt 2."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0 = EqConv2d(cin, cin, 3)
        self.conv1 = EqConv2d(cin, cout, 3, down=True)
        self.skip = EqConv2d(cin, cout, 1, bias=False, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(F.avg_pool2d(x, 2))
        x = self.conv1(self.conv0(x))
        return (x + y) * 0.7071067811865476  # / sqrt 2


def minibatch_std(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append one channel: the standard deviation across a group of samples, averaged."""
    b, c, h, w = x.shape
    g = min(group, b)
    while b % g:
        g -= 1
    y = x.reshape(g, -1, c, h, w).float()
    y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean([1, 2, 3])          # (b / g,)
    y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w).to(x.dtype)
    return torch.cat([x, y], 1)


class ResidualDiscriminator(nn.Module):
    """(B, in_ch, res, res) -> (B,) logits. ``in_ch`` = 4: image x mask and the mask."""

    def __init__(self, res: int, in_ch: int = 4, channel_base: int = 4096, channel_max: int = 256):
        super().__init__()
        top = check_res(res)
        self.fromrgb = EqConv2d(in_ch, channels_at(res, channel_base, channel_max), 1)
        blocks = []
        for k in range(top, 2, -1):
            r = 2 ** k
            blocks.append(DiscriminatorBlock(channels_at(r, channel_base, channel_max),
                                             channels_at(r // 2, channel_base, channel_max)))
        self.blocks = nn.Sequential(*blocks)
        c4 = channels_at(4, channel_base, channel_max)
        self.conv = EqConv2d(c4 + 1, c4, 3)
        self.fc = EqLinear(c4 * 16, c4, act=True)
        self.out = EqLinear(c4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.fromrgb(x))
        x = self.conv(minibatch_std(x))
        return self.out(self.fc(x.flatten(1))).squeeze(1)


class VAEEncoder(nn.Module):
    """Partial UV (albedo x weight (3) + weight (1) channels) -> latent mean and log variance."""

    def __init__(self, res: int, latent: int, channel_base: int = 2048, channel_max: int = 128):
        super().__init__()
        top = check_res(res)
        layers: list[nn.Module] = [EqConv2d(4, channels_at(res, channel_base, channel_max), 3)]
        for k in range(top, 2, -1):
            r = 2 ** k
            layers.append(EqConv2d(channels_at(r, channel_base, channel_max),
                                   channels_at(r // 2, channel_base, channel_max), 3, down=True))
        self.convs = nn.Sequential(*layers)
        c4 = channels_at(4, channel_base, channel_max)
        self.fc = EqLinear(c4 * 16, 2 * latent)
        self.latent = int(latent)

    def forward(self, albedo: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = weight[:, None]
        h = self.fc(self.convs(torch.cat([albedo * w, w], 1)).flatten(1))
        return h[:, :self.latent], h[:, self.latent:].clamp(-12.0, 6.0)


class VAEDecoder(nn.Module):
    """Latent (B, K) -> (B, 3, res, res) linear albedo, a residual over ``mean_img``: a dense layer
    to 4x4 features, then per resolution bilinear upsampling and two 3x3 convolutions."""

    def __init__(self, res: int, latent: int, mean_img: torch.Tensor, channel_base: int = 2048,
                 channel_max: int = 128):
        super().__init__()
        top = check_res(res)
        c4 = channels_at(4, channel_base, channel_max)
        self.fc = EqLinear(latent, c4 * 16, act=True)
        self.c4 = c4
        layers: list[nn.Module] = []
        cin = c4
        for k in range(3, top + 1):
            cout = channels_at(2 ** k, channel_base, channel_max)
            layers += [nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False),
                       EqConv2d(cin, cout, 3), EqConv2d(cout, cout, 3)]
            cin = cout
        self.convs = nn.Sequential(*layers)
        self.out = EqConv2d(cin, 3, 1, act=False)
        with torch.no_grad():
            self.out.weight.mul_(0.1)  # start near the mean image
        self.register_buffer("mean_img", mean_img.reshape(1, 3, res, res).clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], self.c4, 4, 4)
        return self.mean_img + self.out(self.convs(x))


class VAEGenerator(nn.Module):
    """What a VAE checkpoint holds: forward(z) = the decoder, clamped to [0, 1]; ``encode(albedo,
    weight)`` (an exported TorchScript method) = the encoder's mean, an initial latent for a
    partial UV (albedo (B, 3, r, r) linear, weight (B, r, r), at the decoder's resolution)."""

    def __init__(self, encoder: VAEEncoder, decoder: VAEDecoder, out_res: int = 0):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.res = int(decoder.mean_img.shape[-1])
        self.out_res = int(out_res or self.res)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        img = self.decoder(z.float())
        if self.out_res != self.res:
            img = F.interpolate(img, size=[self.out_res, self.out_res], mode="bilinear", align_corners=False)
        return img.clamp(0.0, 1.0)

    @torch.jit.export
    def encode(self, albedo: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if albedo.shape[-1] != self.res:
            aw = F.adaptive_avg_pool2d(albedo * weight[:, None], self.res)
            weight = F.adaptive_avg_pool2d(weight[:, None], self.res)[:, 0]
            albedo = aw / weight[:, None].clamp_min(1e-6)
        return self.encoder(albedo, weight)[0]
