"""The toy model's video codec: RGB video at 16 fps <-> latents shaped like Wan2.1's ([16, F, H/4, W/4]).

Not a trained network, a fixed linear map: every 4x4 pixel patch (48 values) is projected onto the 16 leading
principal components of toy-world patches, then each channel is normalised to zero mean and unit variance.
On toy frames this keeps ~98% of the patch variance (about 27 dB PSNR) and the scorer reads reconstructed
frames almost as well as the originals; it is exact, deterministic and costs one matmul per frame.

Time follows Wan's causal VAE: latent frame 0 is video frame 0 and latent frame i >= 1 covers video frames
4i-3 .. 4i, so T latent frames decode to 4T-3 video frames and the timeline arithmetic is Wan's. A latent frame
stores its last video frame (4i, the keyframe); decoding cross-fades between consecutive keyframes in latent
space. `StreamDecoder` does this chunk by chunk, carrying only the previous keyframe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

PATCH = 4  # spatial reduction per axis
TEMPORAL = 4  # video frames per latent frame (after the first)
CHANNELS = 16


def video_frames_for(latent_frames: int) -> int:
    """Wan's causal VAE: T latent frames <-> 4T-3 video frames."""
    return TEMPORAL * (latent_frames - 1) + 1 if latent_frames > 0 else 0


@dataclass
class ToyCodec:
    """Fixed pixel-unshuffle + PCA projection. Tensors are float32 on CPU unless moved with `to`."""

    basis: torch.Tensor  # [CHANNELS, 3*PATCH*PATCH] orthonormal rows
    patch_mean: torch.Tensor  # [3*PATCH*PATCH]
    latent_mean: torch.Tensor  # [CHANNELS]
    latent_std: torch.Tensor  # [CHANNELS]

    # -- fitting / storage ----------------------------------------------------------------------------------
    @classmethod
    def fit(cls, frames: torch.Tensor) -> "ToyCodec":
        """PCA of the 4x4 patches of `frames` [N, 3, H, W] in [0, 1] (float64 maths, sign-fixed components)."""
        _check_frames(frames)
        patches = F.pixel_unshuffle(frames.double(), PATCH).permute(0, 2, 3, 1).reshape(-1, 3 * PATCH * PATCH)
        mean = patches.mean(0)
        centred = patches - mean
        cov = centred.T @ centred / centred.shape[0]
        _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
        basis = vecs.flip(1)[:, :CHANNELS].T.contiguous()  # [C, 48]
        # eigh's sign is arbitrary: make each component's largest entry positive so refits agree.
        signs = torch.sign(basis.gather(1, basis.abs().argmax(1, keepdim=True)))
        basis = basis * signs
        coeffs = centred @ basis.T
        return cls(basis.float(), mean.float(), coeffs.mean(0).float(), coeffs.std(0).float())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"codec.basis": self.basis, "codec.patch_mean": self.patch_mean,
                "codec.latent_mean": self.latent_mean, "codec.latent_std": self.latent_std}

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> "ToyCodec":
        missing = [k for k in ("codec.basis", "codec.patch_mean", "codec.latent_mean", "codec.latent_std")
                   if k not in sd]
        if missing:
            raise ValueError(f"toy codec weights are missing {', '.join(missing)}; re-run python -m "
                             "echo_core.toy.train or restore echo_core/toy/weights/")
        return cls(*(sd[k].float().contiguous() for k in ("codec.basis", "codec.patch_mean",
                                                           "codec.latent_mean", "codec.latent_std")))

    # -- images <-> latent frames ---------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] -> normalised latents [N, 16, H/4, W/4]."""
        _check_frames(images)
        p = F.pixel_unshuffle(images.float(), PATCH).permute(0, 2, 3, 1)  # [N, h, w, 48]
        z = (p - self.patch_mean) @ self.basis.T
        z = (z - self.latent_mean) / self.latent_std
        return z.permute(0, 3, 1, 2).contiguous()

    def decode_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [N, 16, h, w] -> [N, 3, 4h, 4w] clamped to [0, 1]."""
        if latents.ndim != 4 or latents.shape[1] != CHANNELS:
            raise ValueError(f"latents must be [N, {CHANNELS}, h, w], got {tuple(latents.shape)}")
        z = latents.float().permute(0, 2, 3, 1) * self.latent_std + self.latent_mean
        p = z @ self.basis + self.patch_mean
        return F.pixel_shuffle(p.permute(0, 3, 1, 2), PATCH).clamp(0.0, 1.0)

    # -- videos ---------------------------------------------------------------------------------------------
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """Video [4T-3, 3, H, W] -> latents [16, T, H/4, W/4] (keyframes 0, 4, 8, ...)."""
        _check_frames(frames)
        if (frames.shape[0] - 1) % TEMPORAL:
            raise ValueError(f"a video of {frames.shape[0]} frames has no latent length: use 4T-3 frames "
                             "(1, 5, 9, ...), as Wan's VAE does")
        keys = frames[::TEMPORAL]
        return self.encode_images(keys).permute(1, 0, 2, 3).contiguous()

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [16, T, h, w] or [1, 16, T, h, w] -> video [4T-3, 3, 4h, 4w]."""
        dec = StreamDecoder(self)
        return dec.push(latents)

    def to(self, device: torch.device | str) -> "ToyCodec":
        return ToyCodec(*(t.to(device) for t in (self.basis, self.patch_mean, self.latent_mean, self.latent_std)))


class StreamDecoder:
    """Decode latents chunk by chunk: push [16, f, h, w] (or [1, 16, f, h, w]), get the video frames they cover.

    The first latent frame ever pushed gives one video frame, every later one four, cross-faded from the
    previous keyframe, so pushing chunks one at a time gives exactly the frames of decoding the whole video."""

    def __init__(self, codec: ToyCodec):
        self.codec = codec
        self.previous: torch.Tensor | None = None  # last latent frame [16, h, w]

    def push(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim == 5:
            if latents.shape[0] != 1:
                raise ValueError(f"StreamDecoder decodes one video at a time, got batch {latents.shape[0]}")
            latents = latents[0]
        if latents.ndim != 4 or latents.shape[0] != CHANNELS:
            raise ValueError(f"latents must be [{CHANNELS}, f, h, w], got {tuple(latents.shape)}")
        steps = []
        weights = torch.arange(1, TEMPORAL + 1, dtype=torch.float32, device=latents.device) / TEMPORAL
        for i in range(latents.shape[1]):
            cur = latents[:, i].float()
            if self.previous is None:
                steps.append(cur[None])
            else:  # frames 4i-3 .. 4i: blend from the previous keyframe to this one
                w = weights.view(-1, 1, 1, 1)
                steps.append((1 - w) * self.previous[None] + w * cur[None])
            self.previous = cur
        if not steps:
            return latents.new_zeros((0, 3, latents.shape[2] * PATCH, latents.shape[3] * PATCH))
        return self.codec.decode_images(torch.cat(steps))


def _check_frames(frames: torch.Tensor) -> None:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"frames must be [N, 3, H, W] in [0, 1], got {shape}")
    if frames.shape[2] % PATCH or frames.shape[3] % PATCH:
        raise ValueError(f"frame size {tuple(frames.shape[2:])} must be a multiple of {PATCH} in both axes")
