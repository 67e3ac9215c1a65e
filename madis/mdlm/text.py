"""Text side of the sequence ``[y ; EOS ; z]``: prompt formatting and text tokenizers.

Two tokenizers share one small interface (``encode``, ``decode``, ``eos_id``, ``pad_id``,
``vocab_size``, ``save_pretrained``): the backbone's own Hugging Face tokenizer (Qwen3's
byte-level BPE covers 119 languages) and, when no tokenizer files exist, a built-in UTF-8 byte
tokenizer that needs no download and handles any script (Chinese, German, English and every
language of the sample corpus) at one id per byte.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

TEXT_TOKENIZER_DIR = "text_tokenizer"


class TextTokenizer(Protocol):
    """What the MDLM needs from a text tokenizer."""

    eos_id: int
    pad_id: int
    vocab_size: int
    kind: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save_pretrained(self, directory: str | os.PathLike) -> None: ...


def format_prompt(template: str, text: str, lang: str | None) -> str:
    """The text prefix for one sample: ``template`` with ``{text}`` and ``{lang}`` filled in.

    The language goes in as plain text because a letter or word is signed differently in each
    sign language; with an empty ``lang`` the tag (everything of the template before ``{text}``
    that mentions ``{lang}``) is left out, e.g. ``"[{lang}] {text}"`` gives ``"[dgs] Hallo"``
    or just ``"Hallo"``.
    """
    if lang:
        return template.format(lang=lang, text=text)
    head, _, tail = template.partition("{text}")
    if "{lang}" in head:
        head = ""
    return (head + "{text}" + tail.replace("{lang}", "")).format(text=text)


def char_starts(tok: "TextTokenizer", text: str) -> tuple[list[int], list[int]]:
    """Ids of ``text`` and, for each id, the index of the character it starts in.

    Bytes of one multi-byte character share its index; a Hugging Face tokenizer's token takes
    the character of its first offset. Used by ``model.text_positions: aligned``.
    """
    if isinstance(tok, ByteTokenizer):
        ids, chars = [], []
        for c, ch in enumerate(text):
            b = list(ch.encode("utf-8"))
            ids += b
            chars += [c] * len(b)
        return ids, chars
    enc = tok.tok(text, add_special_tokens=False, split_special_tokens=True,
                  return_offsets_mapping=True)
    return list(enc["input_ids"]), [int(a) for a, _ in enc["offset_mapping"]]


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, then ``<eos>`` = 256 and ``<pad>`` = 257.

    Every Unicode string round-trips exactly; no files, no download.
    """

    kind = "bytes"
    eos_id = 256
    pad_id = 257
    vocab_size = 258

    def encode(self, text: str) -> list[int]:
        """``str`` -> byte ids (no special tokens added)."""
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """Byte ids -> ``str``; special ids are skipped, broken UTF-8 replaced (U+FFFD)."""
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Nothing to save beyond the kind, which the model config records."""


class HFTextTokenizer:
    """A Hugging Face tokenizer (the backbone's), without its chat/special-token handling.

    Text is encoded with ``split_special_tokens=True`` so that user text can never produce a
    special token such as ``<|endoftext|>``; the separator is the tokenizer's ``eos_token``.

    Raises:
        ValueError: the tokenizer has no eos token.
    """

    kind = "hf"

    def __init__(self, hf_tokenizer) -> None:
        self.tok = hf_tokenizer
        if hf_tokenizer.eos_token_id is None:
            raise ValueError("the backbone tokenizer has no eos token to separate text from signs")
        self.eos_id = int(hf_tokenizer.eos_token_id)
        pad = hf_tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_id
        self.vocab_size = len(hf_tokenizer)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike) -> "HFTextTokenizer":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(name_or_path)))

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        self.tok.save_pretrained(str(directory))


def has_hf_tokenizer(name_or_path: str) -> bool:
    """True when ``name_or_path`` is a local directory with tokenizer files, or a hub id (which
    the caller asked for explicitly, so it may be fetched or found in the HF cache)."""
    p = Path(name_or_path)
    if p.exists():
        return any((p / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))
    return "/" in name_or_path  # a hub id such as Qwen/Qwen3-0.6B-Base


def build_text_tokenizer(kind: str, backbone: str) -> TextTokenizer:
    """The text tokenizer for config ``text_tokenizer=kind`` and ``backbone``.

    ``bytes`` -> :class:`ByteTokenizer`; ``auto`` -> the backbone's tokenizer when
    ``backbone`` names one (see :func:`has_hf_tokenizer`), else bytes.
    """
    if kind == "bytes" or backbone == "tiny" or not has_hf_tokenizer(backbone):
        return ByteTokenizer()
    return HFTextTokenizer.from_pretrained(backbone)


def save_text_tokenizer(tok: TextTokenizer, directory: str | os.PathLike) -> None:
    """Write ``tok`` under ``directory/text_tokenizer`` (HF files, or a small JSON for bytes)."""
    d = Path(directory) / TEXT_TOKENIZER_DIR
    d.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(d)
    (d / "madis_text_tokenizer.json").write_text(json.dumps({"kind": tok.kind}))


def load_text_tokenizer(directory: str | os.PathLike) -> TextTokenizer:
    """Inverse of :func:`save_text_tokenizer`.

    Raises:
        FileNotFoundError: no saved text tokenizer in ``directory``.
    """
    d = Path(directory) / TEXT_TOKENIZER_DIR
    meta = d / "madis_text_tokenizer.json"
    if not meta.exists():
        raise FileNotFoundError(f"no text tokenizer saved under {d}")
    kind = json.loads(meta.read_text())["kind"]
    return ByteTokenizer() if kind == "bytes" else HFTextTokenizer.from_pretrained(d)
