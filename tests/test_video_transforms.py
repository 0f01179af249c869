"""Clip transforms against an independent float64 NumPy reference of torchvision's semantics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from egovlpv2_rt.video import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform
from egovlpv2_rt.video.transforms import CropBox, center_crop_box, resize_short_side


def _weights(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """[n_out, n_in] resampling matrix of bilinear, align_corners=False.

    antialias=True: PIL's separable triangle filter widened by the scale when shrinking (what
    torchvision/PyTorch antialias implement). antialias=False: classic 2-tap bilinear with
    source coordinates clamped at the border.
    """
    scale = n_in / n_out
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        if antialias:
            support = max(scale, 1.0)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), n_in)
            w = np.array([max(0.0, 1 - abs((j - center + 0.5) / support)) for j in range(lo, hi)])
            m[i, lo:hi] = w / w.sum()
        else:
            x = max(center - 0.5, 0.0)
            x0 = min(math.floor(x), n_in - 1)
            x1 = min(x0 + 1, n_in - 1)
            f = x - x0
            m[i, x0] += 1 - f
            m[i, x1] += f
    return m


def _ref_resize(img: np.ndarray, h: int, w: int, antialias: bool) -> np.ndarray:
    """img [C, H, W] float64 -> [C, h, w]."""
    if img.shape[1:] == (h, w):
        return img
    rows, cols = _weights(img.shape[1], h, antialias), _weights(img.shape[2], w, antialias)
    return np.stack([rows @ c @ cols.T for c in img])


def _ref_eval(frames_u8: np.ndarray, antialias: bool) -> np.ndarray:
    """The original's val transform written out step by step: [F, 3, H, W] -> [F, 3, 224, 224]."""
    out = []
    for img in frames_u8.astype(np.float64) / 255.0:
        h, w = img.shape[1:]
        if w <= h:
            nh, nw = int(256 * h / w), 256
        else:
            nh, nw = 256, int(256 * w / h)
        img = _ref_resize(img, nh, nw, antialias)
        top, left = round((nh - 256) / 2.0), round((nw - 256) / 2.0)
        img = img[:, top : top + 256, left : left + 256]
        img = _ref_resize(img, 224, 224, antialias)
        mean = np.asarray(IMAGENET_MEAN)[:, None, None]
        std = np.asarray(IMAGENET_STD)[:, None, None]
        out.append((img - mean) / std)
    return np.stack(out)


def _frames(h: int, w: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = np.random.default_rng(seed)
    smooth = np.linspace(0, 255, w)[None, None, :] * np.ones((n, 3, h, 1))
    noise = g.integers(0, 64, size=(n, 3, h, w))
    return torch.from_numpy(np.clip(smooth * 0.7 + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    "h,w", [(256, 455), (250, 333), (480, 640), (64, 48), (256, 256), (333, 250), (100, 341)]
)
@pytest.mark.parametrize("antialias", [True, False])
def test_eval_matches_reference(h, w, antialias):
    frames = _frames(h, w)
    ref = _ref_eval(frames.numpy(), antialias)
    ours = EvalTransform(antialias=antialias)(frames, dtype=torch.float64).numpy()
    assert ours.shape == (2, 3, 224, 224)
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err <= 1e-10, err
    ours32 = EvalTransform(antialias=antialias)(frames).numpy()
    assert ours32.dtype == np.float32
    assert np.abs(ours32 - ref).max() / np.abs(ref).max() <= 1e-5


def test_geometry_follows_torchvision_rounding():
    assert resize_short_side(250, 333, 256) == (256, 340)  # long side truncated, not rounded
    assert resize_short_side(333, 250, 256) == (340, 256)
    assert resize_short_side(256, 455, 256) == (256, 455)
    # CenterCrop uses Python round(): 85 / 2 = 42.5 rounds to even (42), 87 / 2 to 44.
    assert center_crop_box(256, 341, 256) == CropBox(0, 42, 256, 256)
    assert center_crop_box(256, 343, 256) == CropBox(0, 44, 256, 256)
    assert center_crop_box(300, 256, 256) == CropBox(22, 0, 256, 256)
    with pytest.raises(ValueError, match="larger than the image"):
        center_crop_box(100, 300, 256)


def test_eval_accepts_float_frames_and_checks_shapes():
    frames = _frames(64, 80)
    a = EvalTransform()(frames)
    b = EvalTransform()(frames.float() / 255.0)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"frames must be \[F, 3, H, W\], got shape \(64, 80, 3\)"):
        EvalTransform()(frames[0].permute(1, 2, 0))
    with pytest.raises(ValueError, match="need 0 < crop <= resize"):
        EvalTransform(crop=300)


def test_constant_frame_normalises_to_constant():
    frames = torch.full((3, 3, 90, 160), 128, dtype=torch.uint8)
    out = EvalTransform()(frames, dtype=torch.float64)
    for c in range(3):
        expect = (128 / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(out[:, c], torch.full_like(out[:, c], expect), atol=1e-12, rtol=0)


def test_train_crop_follows_the_sampling_rule():
    tf = TrainTransform()
    g = torch.Generator().manual_seed(0)
    areas, flips = [], []
    for _ in range(400):
        p = tf.sample(256, 455, g)
        b = p.box
        assert b.top >= 0 and b.top + b.height <= 256 and b.left >= 0 and b.left + b.width <= 455
        areas.append(b.height * b.width / (256 * 455))
        ratio = b.width / b.height
        assert 3 / 4 - 0.02 <= ratio <= 4 / 3 + 0.02
        flips.append(p.flip)
    assert min(areas) >= 0.49 and max(areas) <= 1.0 + 1e-3
    assert 0.4 < np.mean(flips) < 0.6


def test_train_is_seeded_and_applies_one_crop_per_clip():
    frame = _frames(120, 200, n=1)
    clip = frame.repeat(4, 1, 1, 1)
    tf = TrainTransform()
    a = tf(clip, generator=torch.Generator().manual_seed(5))
    b = tf(clip, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.shape == (4, 3, 224, 224)
    assert all(torch.equal(a[0], a[k]) for k in range(1, 4))


def test_train_apply_matches_reference_crop_resize_flip():
    frames = _frames(120, 200)
    tf = TrainTransform()
    from egovlpv2_rt.video.transforms import TrainParams

    params = TrainParams(CropBox(10, 33, 97, 120), flip=True)
    ours = tf.apply(frames, params, dtype=torch.float64).numpy()
    x = frames.numpy().astype(np.float64)[:, :, 10:107, 33:153] / 255.0
    ref = np.stack([_ref_resize(img, 224, 224, True) for img in x])[..., ::-1]
    ref = (ref - np.asarray(IMAGENET_MEAN)[:, None, None]) / np.asarray(IMAGENET_STD)[:, None, None]
    assert np.abs(ours - ref).max() / np.abs(ref).max() <= 1e-10
