"""The extended vocabulary: text ids, then MaDiS's named special tokens, then sign tokens.

Layout of the backbone's (resized) embedding matrix::

    [0, text_size)                 the text tokenizer's ids (Qwen3's 151936 rows, or 258 bytes)
    text_size + 0                  [M]    mask token (paper: [M])
    text_size + 1                  [EOS]  end of the sign sequence
    text_size + 2                  [PAD]  sign positions after [EOS]
    body, lhand, rhand offsets     one row per code of each part codebook (<body_k> ...)

The special tokens are never produced by the text tokenizer (they are not added to it), so
user text cannot inject a mask. The sign rows are the learned per-part embeddings of SOKE's
``simple_avg`` and of the autoregressive baseline; the MoP layer embeds from the codebooks.

The body head predicts ``K_B + 2`` classes: the K_B codes, then [EOS] and [PAD] ("head space").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from madis.motion.base import PARTS

SPECIAL_TOKENS = ("[M]", "[EOS]", "[PAD]")


@dataclass(frozen=True)
class SignVocab:
    """Ids of the extended vocabulary.

    Attributes:
        text_size: embedding rows of the text vocabulary (before extension).
        codebook_sizes: (K_B, K_L, K_R).
    """

    text_size: int
    codebook_sizes: tuple[int, int, int]

    @property
    def mask_id(self) -> int:
        return self.text_size

    @property
    def eos_id(self) -> int:
        return self.text_size + 1

    @property
    def pad_id(self) -> int:
        return self.text_size + 2

    def part_offset(self, part: int) -> int:
        """First vocabulary id of part ``part``'s sign tokens (0 body, 1 lhand, 2 rhand)."""
        return self.text_size + len(SPECIAL_TOKENS) + sum(self.codebook_sizes[:part])

    @property
    def size(self) -> int:
        """Rows of the extended embedding matrix."""
        return self.text_size + len(SPECIAL_TOKENS) + sum(self.codebook_sizes)

    @property
    def body_classes(self) -> int:
        """Classes of the body head: K_B codes + [EOS] + [PAD]."""
        return self.codebook_sizes[0] + 2

    @property
    def eos_class(self) -> int:
        return self.codebook_sizes[0]

    @property
    def pad_class(self) -> int:
        return self.codebook_sizes[0] + 1

    def name(self, token_id: int) -> str:
        """Readable name of a non-text id: ``[M]``, ``[EOS]``, ``[PAD]``, ``<lhand_17>``."""
        if token_id < self.text_size:
            return f"<text_{token_id}>"
        rel = token_id - self.text_size
        if rel < len(SPECIAL_TOKENS):
            return SPECIAL_TOKENS[rel]
        for p in range(3):
            off = self.part_offset(p)
            if off <= token_id < off + self.codebook_sizes[p]:
                return f"<{PARTS[p]}_{token_id - off}>"
        raise ValueError(f"id {token_id} is outside the vocabulary of size {self.size}")

    def sign_vocab_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """Head-space tokens ``[..., 3]`` -> vocabulary ids ``[..., 3]`` (body [EOS]/[PAD] map to
        their special rows; hand entries of special positions map to the ``[PAD]`` row)."""
        kb = self.codebook_sizes[0]
        body = tokens[..., 0]
        special = body >= kb
        body_id = torch.where(special, self.eos_id + (body - kb), body + self.part_offset(0))
        hands = [torch.where(special, self.pad_id, tokens[..., p] + self.part_offset(p))
                 for p in (1, 2)]
        return torch.stack([body_id, *hands], -1)
