"""InfoPro auxiliary head: reconstruction of the input + supervised contrastive loss.

Wang, Ni, Song, Yang, Huang, "Revisiting Locally Supervised Learning: an Alternative to End-to-End
Training", ICLR 2021; reference code blackfeather-wang/InfoPro-Pytorch (networks/auxiliary_nets.py,
networks/resnet.py). The local loss of module k (the reference code's
``loss = ixx_r * loss_ixx + ixy_r * loss_ixy``) is

    lambda1 * BCE(sigmoid(decoder(h)), x01)  +  lambda2 * SupCon(normalize(projection(h)), y; tau = 0.07)

- reconstruction, as in the reference's ``Decoder``: binary cross-entropy (mean over all elements)
  between sigmoid(decoder(h)) and x01, the network input mapped to [0, 1]. The reference decodes
  the un-normalised image (its ``_image_restore`` undoes the dataset's mean/std); a head does not
  know the dataset's normalisation, so x01 = (x0 - min) / (max - min) with min and max taken over
  the batch per input channel (over the whole batch for a flat x0). For standardised images whose
  batch holds a black and a white pixel per channel this is exactly the reference's restored image;
  for other data it is an affine map of the batch onto [0, 1] (MNIST-1D: x01 has std 0.14 per batch,
  digits 0.38, so on MNIST-1D the reconstruction pulls less against the contrastive term). A channel
  with max = min gives x01 = 0. x01 is data: no gradient flows into it.
  Why not MSE against the standardised x0 (what this head did before): MSE has an unbounded output
  gradient and 8x the curvature of sigmoid + BCE at the output (2 vs sigmoid' <= 1/4). At lambda1 = 5
  the Hessian of the reconstruction term over stage 0 + decoder at initialisation had a top eigenvalue
  of 390-520 (cnn1d_bn on MNIST-1D, cnn2d on digits) against 34-75 with BCE, and SGD with momentum 0.9
  is only stable for lr * eig < 2 (1 + 0.9) = 3.8. At lr 0.05 the MSE term ran away (MNIST-1D K = 2
  seed 2: 1.1 at step 0, 2e16 at step 8, NaN from step 14; digits K = 3: 1.7 -> 1e20 in 11 steps,
  stage outputs to 1e16 and the last stage's loss to 1e35), and 7 of 9 MNIST-1D runs (K = 2, 3, 4,
  40 epochs) ended NaN or at chance. See docs/accuracy_methods.md.
- decoder: interpolate h (bilinear for 2D, linear for 1D) to x0's spatial size, then
  [3x3 conv C->12, BN, ReLU, 3x3 conv 12->C_in] (the reference decoder, less the first conv's bias,
  which the BN cancels; its sigmoid is folded into the loss, ``binary_cross_entropy_with_logits``, for
  numerical stability). Flat features use Linear(F -> numel(x0)); features whose spatial rank does not
  match x0's are pooled to 2 per spatial dim, flattened and decoded by a Linear. A flat x0 (N,) under 1D features is treated as (1, N).
  ``decode(h)`` gives the logits, ``reconstruct(h)`` their sigmoid (the reconstruction of x01),
  ``target(x0)`` gives x01.
- projection: global average pool, Linear C->hidden, ReLU, Linear hidden->128, L2-normalise
  (hidden = max(128, C)). This is the reference's lighter ``0c2f`` auxiliary net; its default
  ``1c2f`` puts a [3x3 conv, BN, ReLU] before the pool.
- SupCon: Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, Eq. 2 (L_out), as the
  reference's ``SupConLoss`` with one view (its temperature / base_temperature factor is 1), except
  that anchors with no positive in the batch are left out of the mean (the reference counts them as 0).

Lambda schedule (our choice, following the reference code's linear interpolation over modules):
the heads sit on stages k = 0..K-2; with r = k / (K-2) (r = 0 when K = 2),

    lambda1 = 5.0 * (1 - r) + 0.5 * r      reconstruction: early stages keep more of the input
    lambda2 = 0.5 * (1 - r) + 1.0 * r      contrastive: late stages keep more task information

so lambda1 falls and lambda2 rises with the stage. K = 2 gives (5.0, 0.5), the reference setting
for ResNet-110 / CIFAR-10 with two modules. Pass ``lambda1=`` / ``lambda2=`` to fix either weight.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from torchdecoupled.heads.base import AuxHead, check_features, conv_bn, global_pool, pool

LAMBDA1_RANGE = (5.0, 0.5)  # (first head, last head)
LAMBDA2_RANGE = (0.5, 1.0)


def infopro_lambdas(stage: int, num_stages: int) -> tuple[float, float]:
    """(lambda1, lambda2) for the head on `stage` of `num_stages` (see the module docstring)."""
    r = stage / (num_stages - 2) if num_stages > 2 else 0.0
    r = min(max(r, 0.0), 1.0)
    lam1 = LAMBDA1_RANGE[0] * (1 - r) + LAMBDA1_RANGE[1] * r
    lam2 = LAMBDA2_RANGE[0] * (1 - r) + LAMBDA2_RANGE[1] * r
    return lam1, lam2


def supcon_loss(z: torch.Tensor, y: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss L_out (Khosla et al. 2020, Eq. 2) on L2-normalised z (B, D).

    For anchor i with positives P(i) = {p != i : y_p = y_i} and A(i) = {a != i}:
    l_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a in A(i)} exp(z_i.z_a / tau) ).
    Anchors with empty P(i) (a class seen once in the batch) are skipped; the result is the mean
    over the remaining anchors, or a zero that still carries the graph when none has a positive.
    """
    same = y.view(-1, 1) == y.view(1, -1)
    eye = torch.eye(len(y), dtype=torch.bool, device=y.device)
    positives = same & ~eye
    anchors = positives.any(1)
    if not bool(anchors.any()):
        return z.sum() * 0.0
    logits = (z[anchors] @ z.T) / temperature  # (A, B): rows are the anchors that have positives
    self_mask = eye[anchors]
    log_norm = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    log_prob = torch.where(positives[anchors], logits - log_norm, torch.zeros_like(logits))
    per_anchor = -log_prob.sum(1) / positives[anchors].sum(1)
    return per_anchor.mean()


def _decode_target(feature_shape: tuple[int, ...],
                   input_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """(C_in, *spatial) a conv decoder should produce, or None when a Linear decoder is used."""
    spatial = feature_shape[1:]
    target = (1,) + input_shape if len(input_shape) == 1 else input_shape  # flat x0 (N,) as (1, N)
    return target if spatial and len(target) == len(spatial) + 1 else None


def _decoder(feature_shape: tuple[int, ...], input_shape: tuple[int, ...], width: int) -> nn.Module:
    channels, spatial = feature_shape[0], feature_shape[1:]
    target = _decode_target(feature_shape, input_shape)
    if target is None:  # flat features, or spatial ranks that do not match: pool, flatten, Linear
        return nn.Linear(channels * 2 ** len(spatial), math.prod(input_shape))
    conv = nn.Conv1d if len(spatial) == 1 else nn.Conv2d
    return nn.Sequential(*conv_bn(len(spatial), channels, width, 3), nn.ReLU(),
                         conv(width, target[0], 3, padding=1))


class InfoProHead(AuxHead):
    """lambda1 * BCE(sigmoid(decoder(h)), x0 in [0, 1]) + lambda2 * SupCon(projection(h), y); see the module doc."""

    name = "infopro"

    def __init__(self, feature_shape: tuple[int, ...], num_classes: int,
                 input_shape: tuple[int, ...], stage: int = 0, num_stages: int = 2,
                 lambda1: float | None = None, lambda2: float | None = None,
                 temperature: float = 0.07, proj_dim: int = 128, decoder_width: int = 12):
        super().__init__()
        self.feature_shape, self.input_shape = tuple(feature_shape), tuple(input_shape)
        lam1, lam2 = infopro_lambdas(stage, num_stages)
        self.lambda1 = float(lam1 if lambda1 is None else lambda1)
        self.lambda2 = float(lam2 if lambda2 is None else lambda2)
        self.temperature = temperature
        self.decoder = _decoder(self.feature_shape, self.input_shape, decoder_width)
        channels = feature_shape[0]
        hidden = max(proj_dim, channels)
        self.projection = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(),
                                        nn.Linear(hidden, proj_dim))

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """decoder(h): the reconstruction's logits, shaped like x0."""
        spatial = self.feature_shape[1:]
        target = _decode_target(self.feature_shape, self.input_shape)
        if target is None:
            flat = pool(h, (2,) * len(spatial)).flatten(1) if spatial else h
            return self.decoder(flat).view(-1, *self.input_shape)
        mode = "linear" if len(spatial) == 1 else "bilinear"
        up = nn.functional.interpolate(h, size=target[1:], mode=mode, align_corners=True)
        return self.decoder(up).view(-1, *self.input_shape)

    def reconstruct(self, h: torch.Tensor) -> torch.Tensor:
        """sigmoid(decoder(h)): the reconstruction of target(x0), in [0, 1], shaped like x0."""
        return torch.sigmoid(self.decode(h))

    @staticmethod
    def target(x0: torch.Tensor) -> torch.Tensor:
        """x0 mapped to [0, 1] by the batch's min and max per input channel (whole batch if x0 is flat)."""
        x0 = x0.detach()
        dims = [0] + list(range(2, x0.dim())) if x0.dim() > 2 else list(range(x0.dim()))
        lo, hi = x0.amin(dim=dims, keepdim=True), x0.amax(dim=dims, keepdim=True)
        return (x0 - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))  # max = min: x0 - lo = 0

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        """L2-normalised projection of h, the SupCon features."""
        return nn.functional.normalize(self.projection(global_pool(h)), dim=1)

    def loss(self, h: torch.Tensor, y: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        check_features(h, self.feature_shape, self.name)
        if tuple(x0.shape[1:]) != self.input_shape:
            raise ValueError(f"infopro head was built for input_shape {self.input_shape} but got "
                             f"x0 of shape {tuple(x0.shape)}; build it with "
                             f"input_shape=x0.shape[1:]")
        recon = nn.functional.binary_cross_entropy_with_logits(self.decode(h), self.target(x0))
        contrast = supcon_loss(self.embed(h), y, self.temperature)
        return self.lambda1 * recon + self.lambda2 * contrast
