"""Torch building blocks of the torch registration backend: smoothing, MIND-SSC, masked losses.

Everything here works on tensors shaped ``(batch, channels, *spatial)`` with 2 or 3 spatial
axes in torch's order (``(z, y, x)`` for 3D, ``(y, x)`` for 2D). ``torch`` is imported inside
the functions so that importing this module stays cheap.

MIND-SSC is the modality independent neighbourhood descriptor with a self-similarity
context (Heinrich et al., MICCAI 2013): for every voxel, the patch distances between pairs of
its six neighbours (four in 2D) that lie on different axes, turned into a descriptor that
is the same whatever the contrast. Comparing descriptors with a squared difference gives a
smooth, local multimodal similarity, well suited to deformable registration.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = [
    "gaussian_kernel1d",
    "gaussian_blur",
    "mind_ssc",
    "masked_mean",
    "mind_loss",
    "lncc_loss",
    "masked_lncc",
    "mutual_information_loss",
    "mattes_mutual_information_loss",
    "diffusion_regularisation",
    "bending_regularisation",
]


def gaussian_kernel1d(sigma: float, device: Any = None, dtype: Any = None) -> Any:
    """A normalised 1D Gaussian kernel, truncated at 3 sigma (at least 3 taps)."""
    import torch

    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype or torch.float32)
    kernel = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(x: Any, sigmas: Sequence[float]) -> Any:
    """Separable Gaussian smoothing with replicate padding.

    Each axis is filtered with ``conv1d`` on a view that puts that axis last: on the CPU this is
    several times faster (forward and backward) than ``conv3d`` with a 1D kernel.

    Args:
        x: tensor ``(B, C, *spatial)``.
        sigmas: one sigma per spatial axis, in voxels and in torch axis order; 0 skips the axis.

    Returns:
        A tensor of the same shape (differentiable).
    """
    import torch.nn.functional as F

    dim = x.ndim - 2
    out = x
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0:
            continue
        kernel = gaussian_kernel1d(float(sigma), x.device, x.dtype)
        radius = (kernel.numel() - 1) // 2
        moved = out.movedim(2 + axis, -1)
        shape = moved.shape
        flat = moved.reshape(-1, 1, shape[-1])
        flat = F.conv1d(F.pad(flat, [radius, radius], mode="replicate"), kernel.reshape(1, 1, -1))
        out = flat.reshape(shape).movedim(-1, 2 + axis)
    del dim
    return out


def _mind_pairs(dim: int, dilation: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Pairs of the 2*dim axis neighbours (at ``dilation`` voxels) that lie on different axes."""
    neighbours = []
    for axis in range(dim):
        for sign in (-1, 1):
            offset = [0] * dim
            offset[axis] = sign * dilation
            neighbours.append(tuple(offset))
    pairs = []
    for i, a in enumerate(neighbours):
        for b in neighbours[i + 1:]:
            if sum(1 for u, v in zip(a, b) if u != v) == 2:  # squared distance 2: not opposite
                pairs.append((a, b))
    return pairs  # 12 in 3D, 4 in 2D


def mind_ssc(image: Any, radius: int = 1, dilation: int = 2) -> Any:
    """MIND-SSC descriptors of an image.

    Args:
        image: tensor ``(B, 1, *spatial)`` (2D or 3D), intensities on any scale.
        radius: half width of the box filter that turns squared differences into patch distances.
        dilation: distance in voxels of the neighbours that are compared.

    Returns:
        tensor ``(B, P, *spatial)`` with values in (0, 1]; P = 12 in 3D, 4 in 2D.
    """
    import torch
    import torch.nn.functional as F

    dim = image.ndim - 2
    spatial = image.shape[2:]
    padded = F.pad(image, [dilation] * (2 * dim), mode="replicate")

    def shifted(offset: tuple[int, ...]) -> Any:
        index = tuple(slice(dilation + o, dilation + o + n) for o, n in zip(offset, spatial))
        return padded[(slice(None), slice(None)) + index]

    ssd = torch.cat([(shifted(a) - shifted(b)) ** 2 for a, b in _mind_pairs(dim, dilation)], dim=1)
    pool = F.avg_pool3d if dim == 3 else F.avg_pool2d
    ssd = pool(F.pad(ssd, [radius] * (2 * dim), mode="replicate"), 2 * radius + 1, stride=1)
    mind = ssd - ssd.min(dim=1, keepdim=True).values
    variance = mind.mean(dim=1, keepdim=True)
    # clamp the local variance around its global mean so flat regions do not blow up
    level = variance.mean().detach()
    variance = torch.clamp(variance, min=float(level) * 1e-3 + 1e-12, max=float(level) * 1e3 + 1e-12)
    return torch.exp(-mind / variance)


def masked_mean(values: Any, mask: Any | None) -> Any:
    """Mean of ``values`` (B, C, *spatial) over the voxels where ``mask`` (B, 1, *spatial) > 0."""
    if mask is None:
        return values.mean()
    weight = mask.to(values.dtype)
    denom = weight.sum() * values.shape[1]
    return (values * weight).sum() / denom.clamp_min(1.0)


def mind_loss(fixed_descriptors: Any, warped_descriptors: Any, mask: Any | None = None) -> Any:
    """Mean squared difference of MIND descriptors over the mask (0 = identical)."""
    return masked_mean((fixed_descriptors - warped_descriptors) ** 2, mask)


def lncc_loss(fixed: Any, warped: Any, mask: Any | None = None, kernel_size: int = 7,
              window_mask: Any | None = None) -> Any:
    """Local normalised cross-correlation loss (-1 = perfect), averaged over ``mask``.

    Without ``window_mask``, MONAI's ``LocalNormalizedCrossCorrelationLoss`` (squared LNCC in a box
    window over every voxel). With it, each window's means, variances and covariance are taken over
    the window's voxels inside ``window_mask`` only, as ANTs' neighbourhood correlation does under a
    mask: what lies outside it (an artefact, a region one image lacks) does not reach the voxels
    next to it.

    Args:
        fixed: tensor ``(B, 1, *spatial)``.
        warped: tensor of the same shape.
        mask: ``(B, 1, *spatial)`` weights (0/1) of the voxels averaged, or None for all.
        kernel_size: odd window width in voxels.
        window_mask: ``(B, 1, *spatial)`` weights (0/1) of the voxels the windows may use, or None.

    Under autocast (bfloat16/float16) LNCC is still computed in float32: its local variances lose every
    digit in bfloat16.
    """
    if window_mask is None:
        from monai.losses import LocalNormalizedCrossCorrelationLoss

        with _float32(fixed):  # the constructor too: its window volume is a matmul (343 -> 344 in bfloat16)
            loss = LocalNormalizedCrossCorrelationLoss(spatial_dims=fixed.ndim - 2, kernel_size=int(kernel_size),
                                                       reduction="none")
            return masked_mean(loss(warped.float(), fixed.float()), mask)
    return masked_mean(-masked_lncc(fixed, warped, window_mask, kernel_size), mask)


def _float32(tensor: Any) -> Any:
    """A region where autocast is off on ``tensor``'s device: LNCC's window variances E[x^2] - E[x]^2 cancel
    catastrophically in bfloat16 (8-bit mantissa). Under CUDA's bfloat16 autocast (the torch backend's
    ``mixed_precision``, emulated on the CPU) the box sums came out of the convolutions in bfloat16 and
    the loss of a 3 mm MNI152 pair read -4.3e6 instead of -0.73. Without autocast this changes nothing."""
    import torch

    return torch.autocast(device_type=tensor.device.type, enabled=False)


def masked_lncc(fixed: Any, warped: Any, mask: Any, kernel_size: int = 7, eps: float = 1e-5) -> Any:
    """Squared local NCC per voxel with window statistics over the voxels inside ``mask`` only.

    As MONAI's LNCC (box window, variances floored at ``eps``), except that every window sum is
    weighted by the mask and the means divide by the window's count of masked voxels: with a mask of
    ones it equals MONAI's away from the image border (where MONAI counts the zero padding).

    Returns:
        tensor ``(B, 1, *spatial)`` in [0, 1] (0 where the window holds no masked voxel), float32: under
        autocast too, the window statistics are computed in float32.
    """
    import torch
    from monai.networks.layers import separable_filtering

    with _float32(fixed):
        fixed, warped = fixed.float(), warped.float()
        weight = mask.to(fixed.dtype)
        kernels = [torch.ones(int(kernel_size), dtype=fixed.dtype, device=fixed.device)] * (fixed.ndim - 2)
        f, w = fixed * weight, warped * weight
        count = separable_filtering(weight, kernels)
        f_sum, w_sum = separable_filtering(f, kernels), separable_filtering(w, kernels)
        f2_sum = separable_filtering(f * fixed, kernels)
        w2_sum = separable_filtering(w * warped, kernels)
        fw_sum = separable_filtering(f * warped, kernels)
        n = count.clamp_min(1.0)
        f_avg, w_avg = f_sum / n, w_sum / n
        cross = fw_sum - w_avg * f_sum
        floor = torch.as_tensor(eps, dtype=f_sum.dtype, device=f_sum.device)
        f_var = torch.max(f2_sum - f_avg * f_sum, floor)
        w_var = torch.max(w2_sum - w_avg * w_sum, floor)
        return cross * cross / (f_var * w_var)


def mutual_information_loss(fixed_values: Any, warped_values: Any, num_bins: int = 32) -> Any:
    """MONAI's global mutual information loss (negative MI, lower is better).

    Args:
        fixed_values: tensor ``(B, N)`` or image-shaped, intensities scaled to [0, 1].
        warped_values: same shape as ``fixed_values``.
        num_bins: Parzen histogram bins.
    """
    from monai.losses import GlobalMutualInformationLoss

    loss = GlobalMutualInformationLoss(num_bins=int(num_bins))
    return loss(warped_values.float(), fixed_values.float())


def _cubic_bspline(x: Any) -> Any:
    """Cubic B-spline kernel (support |x| < 2, partition of unity)."""
    import torch

    ax = x.abs()
    inner = (4.0 - 6.0 * ax ** 2 + 3.0 * ax ** 3) / 6.0
    outer = (2.0 - ax).clamp_min(0.0) ** 3 / 6.0
    return torch.where(ax < 1.0, inner, outer)


def mattes_mutual_information_loss(fixed_values: Any, warped_values: Any, num_bins: int = 32,
                                   counted: Any | None = None) -> Any:
    """Negative mutual information with Mattes' Parzen windows (as ITK's Mattes MI metric).

    The fixed intensities fall in one bin each (zero-order window, constant during the
    optimisation) and the moving ones spread over four bins with a cubic B-spline window, so
    building the joint histogram costs O(N) kernel evaluations instead of O(N x bins) for a
    Gaussian window (MONAI's ``GlobalMutualInformationLoss``), about 10x faster on the CPU.

    Args:
        fixed_values: (1, N) or image-shaped tensor, intensities in [0, 1] (not differentiated).
        warped_values: same shape, intensities in [0, 1] (differentiated).
        num_bins: histogram bins (two at each end are padding for the B-spline window).
        counted: optional (1, N) or (N,) tensor of 0/1: only the values of weight 1 count (as indexing them would,
            without reading their count back from the device). All ones gives the unweighted result bit for bit.

    Returns:
        scalar tensor, -MI in nats (lower is better).
    """
    import torch

    bins = int(num_bins)
    pad = 2
    span = bins - 1 - 2 * pad
    f = fixed_values.reshape(-1).detach().float().clamp(0.0, 1.0)
    m = warped_values.reshape(-1).float().clamp(0.0, 1.0)
    n = f.numel()
    f_bin = torch.round(f * span + pad).long()
    fixed_onehot = torch.zeros(n, bins, device=f.device, dtype=m.dtype)
    fixed_onehot.scatter_(1, f_bin[:, None], 1.0)
    pos = m * span + pad
    base = torch.floor(pos).detach().long()
    ks = base[:, None] + torch.arange(-1, 3, device=m.device)[None]        # (N, 4) bins touched
    weights = _cubic_bspline(pos[:, None] - ks.to(pos.dtype))              # (N, 4)
    moving_w = torch.zeros(n, bins, device=m.device, dtype=m.dtype).scatter(1, ks.clamp(0, bins - 1), weights)
    if counted is None:
        joint = fixed_onehot.transpose(0, 1) @ moving_w / float(n)        # (bins, bins)
    else:
        w = counted.reshape(-1).to(m.dtype)
        joint = (fixed_onehot * w[:, None]).transpose(0, 1) @ moving_w / w.sum().clamp_min(1.0)
    p_fixed = joint.sum(dim=1, keepdim=True)
    p_moving = joint.sum(dim=0, keepdim=True)
    eps = 1e-10
    mi = (joint * (torch.log(joint + eps) - torch.log(p_fixed @ p_moving + eps))).sum()
    return -mi


def _central_difference(x: Any, axis: int) -> Any:
    """(x[i+1] - x[i-1]) / 2 along spatial ``axis`` (0-based), on the interior of every spatial axis.

    The same as MONAI's ``spatial_gradient`` (used by its DiffusionLoss/BendingEnergyLoss),
    written with tuple indexing: MONAI 1.6 indexes with a list, which torch deprecates.
    """
    dim = x.ndim - 2
    start = [slice(None), slice(None)] + [slice(1, -1)] * dim
    end = list(start)
    start[2 + axis] = slice(2, None)
    end[2 + axis] = slice(None, -2)
    return (x[tuple(start)] - x[tuple(end)]) / 2.0


def diffusion_regularisation(field: Any) -> Any:
    """Mean squared first derivatives of a (B, d, *spatial) field (MONAI ``DiffusionLoss``, voxel units)."""
    dim = field.ndim - 2
    total = 0.0
    for axis in range(dim):
        total = total + _central_difference(field, axis) ** 2
    return total.mean()


def bending_regularisation(field: Any) -> Any:
    """Mean bending energy of a (B, d, *spatial) field: squared second derivatives (central differences
    of central differences, mixed terms twice), voxel units."""
    dim = field.ndim - 2
    first = [_central_difference(field, axis) for axis in range(dim)]
    total = 0.0
    for i in range(dim):
        total = total + _central_difference(first[i], i) ** 2
        for j in range(i + 1, dim):
            total = total + 2.0 * _central_difference(first[i], j) ** 2
    return total.mean()
