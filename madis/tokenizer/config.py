"""``TokenizerConfig``: sizes and losses of the decoupled part VQ-VAE (section ``tokenizer``)."""

from __future__ import annotations

from dataclasses import dataclass

from madis.config import ConfigError, check_bounds

HAND_FRAMES = ("body", "wrist")


@dataclass
class TokenizerConfig:
    """Hyper-parameters of the three part VQ-VAEs (docs/design.md#tokenizer, SOKE / T2M-GPT).

    The defaults are the paper's sizes; ``configs/cpu-tiny.yaml`` shrinks them. The motion format
    and the z-score statistics are not config: they come from the shard manifest and travel with
    the weights (``DecoupledTokenizer(config, motion_format, mean, std)``).

    Attributes:
        width: channels of every Conv1d in encoders and decoders (paper 512).
        code_dim: dimension d_p of each code vector, the same for the three parts (paper 512).
        codebook_sizes: K_p per part in PARTS order, (body, lhand, rhand) (paper 96, 192, 192).
        depth: residual blocks per dilated ResNet1D stack (paper 3).
        dilation_growth_rate: dilation of block j is ``rate ** j`` (T2M-GPT uses 3).
        ema_decay: decay of the codebook's exponential moving averages (paper 0.99).
        commitment_weight: weight of ``||z_e - sg(z_q)||^2`` in the loss (paper 0.02).
        dead_code_threshold: a code whose EMA usage count falls below this is reset to a random
            encoder output of the current batch (T2M-GPT resets below 1.0).
        hand_frame: ``body`` (the format's features as they are, the paper's) or ``wrist``:
            the hand VQ-VAEs see each hand's points relative to its wrist
            (:meth:`~madis.motion.MotionFormat.hands_to_wrist`), with z-score statistics of
            those features. For keypoint data, where the hands are positions in shoulder
            widths, the arm's travel otherwise dominates the hand features and hand shapes
            (what fingerspelling is made of) get few codes (docs/design.md#tokenizer).
            SMPL-X hands are rotations already: the switch changes nothing there.
    """

    width: int = 512
    code_dim: int = 512
    codebook_sizes: tuple[int, int, int] = (96, 192, 192)
    depth: int = 3
    dilation_growth_rate: int = 3
    ema_decay: float = 0.99
    commitment_weight: float = 0.02
    dead_code_threshold: float = 1.0
    hand_frame: str = "body"

    def __post_init__(self) -> None:
        check_bounds(self, "tokenizer",
                     at_least_one=("width", "code_dim", "depth", "dilation_growth_rate"))
        self.codebook_sizes = tuple(int(k) for k in self.codebook_sizes)  # type: ignore[assignment]
        if len(self.codebook_sizes) != 3 or min(self.codebook_sizes) < 2:
            raise ConfigError(
                f"tokenizer.codebook_sizes must be three sizes >= 2 (body, lhand, rhand), "
                f"got {self.codebook_sizes}"
            )
        if self.hand_frame not in HAND_FRAMES:
            raise ConfigError(f"tokenizer.hand_frame must be one of {HAND_FRAMES}, got "
                              f"{self.hand_frame!r}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"tokenizer.ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.commitment_weight < 0 or self.dead_code_threshold < 0:
            raise ConfigError("tokenizer.commitment_weight and dead_code_threshold must be >= 0")
