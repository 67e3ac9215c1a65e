"""Decoupled sign tokenizer (paper 3.1): three part VQ-VAEs with EMA codebooks. No Ray here."""

from madis.tokenizer.codebook import EMACodebook, QuantizerOutput
from madis.tokenizer.config import TokenizerConfig
from madis.tokenizer.decoupled import PAD_TOKEN, DecoupledTokenizer, TokenizerOutput
from madis.tokenizer.vqvae import PartVQVAE

__all__ = [
    "PAD_TOKEN", "DecoupledTokenizer", "EMACodebook", "PartVQVAE",
    "QuantizerOutput", "TokenizerConfig", "TokenizerOutput",
]
