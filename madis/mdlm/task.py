"""MaDiS pretraining and fine-tuning as a :class:`madis.train.Task` (paper 3.2, 3.3). No Ray here.

One task class serves both stages; ``stage`` picks the objective of
:meth:`MaDiSModel.loss <madis.mdlm.model.MaDiSModel.loss>`:

* ``pretrain`` -- tri-level pretraining on the combined train splits of every token shard set it
  is given: text and sign positions both masked, ``L_pre = L_token + L_latent + L_phys``.
* ``finetune`` -- starts from a pretraining export (``init_from``), text never masked, UTC index
  masks, MoP embedding, ``L_ft = L_token + lambda (L_latent + L_phys)``.

Token shards are streamed from their storage (``s3://...`` or a directory) by the shard reader,
never copied. Every shard set must come from the same tokenizer checkpoint (its manifest's
``tokenizer_export``), which the task loads (frozen) for the latent and physical losses and
records in each checkpoint's metadata.
"""

from __future__ import annotations

import copy
import math
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from madis.config import ConfigError, job_section, to_dict
from madis.mdlm.base import SignLanguageModel, load_pretrained, model_class, saved_model_config
from madis.mdlm.config import ModelConfig
from madis.mdlm.exports import TOKENIZER_DIR, load_tokenizer
from madis.mdlm.model import STAGES
from madis.motion.base import FRAMES_PER_POSITION
from madis.train.task import Task
from madis.utils.pretrained import local_copy

#: ModelConfig fields that fix the architecture: a fine-tuning config must agree with the
#: pretraining checkpoint on these (the rest -- masking, losses, decoding -- may change).
ARCHITECTURE_FIELDS = ("architecture", "backbone", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                       "head_dim", "intermediate_size", "rope_theta", "text_tokenizer", "dtype")
#: seed of the masks drawn for validation losses (the same masks at every checkpoint)
VAL_SEED = 1234


class MDLMTrainModule(nn.Module):
    """What the DeepSpeed engine wraps: ``forward(batch) = model.loss(batch, stage)``.

    Going through ``forward`` (rather than calling ``model.loss`` on the bare module) keeps the
    engine's hooks in the path, which ZeRO-3 needs to gather partitioned parameters.
    """

    def __init__(self, model: SignLanguageModel, stage: str) -> None:
        super().__init__()
        self.model = model
        self.stage = stage

    def forward(self, batch, generator: torch.Generator | None = None):
        return self.model.loss(batch, self.stage, generator=generator)


def model_config(tree: Mapping[str, Any], job: str | None = None) -> ModelConfig:
    """Section ``model`` of a loaded config tree, overridden field by field by
    ``model_<job>`` (e.g. ``model_pretrain`` for Table 3's pretraining-only switches).

    Raises:
        ConfigError: an unknown field or a bad value in either section.
    """
    return job_section(tree, "model", job, ModelConfig)


def init_model(cfg: ModelConfig, tokenizer, init_from: str | None) -> SignLanguageModel:
    """A fresh model of ``cfg.architecture`` (MaDiS, or the autoregressive baseline), or the
    weights exported at ``init_from`` with ``cfg``'s non-architecture fields (masking, losses,
    embedding variant, decoding switches) applied.

    Raises:
        ConfigError: ``cfg`` asks for another architecture than the checkpoint holds.
        FileNotFoundError: no model at ``init_from``.
    """
    if not init_from:
        return model_class(cfg.architecture)(cfg, tokenizer)
    import json

    with local_copy(init_from) as local:
        saved = saved_model_config(json.loads((Path(local) / "config.json").read_text()))
        wanted = to_dict(cfg)
        differ = {k: (saved.get(k), wanted[k]) for k in ARCHITECTURE_FIELDS
                  if saved.get(k) != wanted[k]}
        if differ:
            raise ConfigError(f"model config differs from the checkpoint at {init_from} in its "
                              f"architecture (checkpoint, config): {differ}")
        return load_pretrained(local, tokenizer, overrides=wanted)


def truncate_sample(sample: dict, num_positions: int) -> dict:
    """Cut a decoded sample to ``num_positions`` sign positions (``4 * num_positions`` frames).

    The model holds N positions; a profile may choose N below the longest clip (cpu-tiny), and
    such a clip trains on its first 4N frames with no ``[EOS]`` target (it does not end there).
    """
    frames = FRAMES_PER_POSITION * num_positions
    if len(sample["tokens"]) <= num_positions:
        return sample
    return {**sample, "tokens": sample["tokens"][:num_positions],
            "motion": sample["motion"][:frames], "valid": sample["valid"][:frames]}


def mixed_samples(roots: Sequence[str], weights: Sequence[int], split: str, *, rank: int,
                  world_size: int, seed: int, epoch: int, shuffle: bool = True,
                  shuffle_buffer: int = 256) -> Iterator[dict]:
    """Decoded token samples of several shard sets as one stream, for one rank.

    Each next sample comes from a source drawn with probability proportional to its
    ``weights`` entry (its sample count) among the sources not yet exhausted, so datasets
    stay mixed through the epoch. Deterministic per ``(seed, epoch, rank, world_size)``.
    """
    from madis.data.shards import iter_samples

    streams = [iter_samples(r, split, rank=rank, world_size=world_size, seed=seed, epoch=epoch,
                            shuffle=shuffle, with_tokens=True, shuffle_buffer=shuffle_buffer)
               for r in roots]
    live = list(range(len(streams)))
    rng = random.Random(f"mix-{seed}-{epoch}-{rank}-{world_size}")
    while live:
        i = rng.choices(live, weights=[max(weights[j], 1) for j in live])[0] if len(live) > 1 \
            else live[0]
        sample = next(streams[i], None)
        if sample is None:
            live.remove(i)
            continue
        yield sample


def read_token_manifests(shards: Sequence[str]) -> list[dict]:
    """Manifests of token shard sets, checked to share one motion format and one tokenizer.

    Raises:
        ValueError: no shard set, a set without tokens, or sets that disagree.
    """
    from madis.data.shards import read_manifest

    if not shards:
        raise ValueError("no token shard set given")
    manifests = [read_manifest(s) for s in shards]
    for url, m in zip(shards, manifests):
        if not m.get("tokens"):
            raise ValueError(f"{url} holds no tokens: run ray_jobs/train_tokenizer.py to write "
                             f"token shards, and point the job at those")
    formats = {m["format"] for m in manifests}
    tokenizers = {(m.get("tokenizer_export") or {}).get("url") for m in manifests}
    if len(formats) > 1:
        raise ValueError(f"token shard sets hold different motion formats: {sorted(formats)}")
    if len(tokenizers) > 1:
        raise ValueError(f"token shard sets were written by different tokenizers: "
                         f"{sorted(map(str, tokenizers))}; one model uses one tokenizer")
    return manifests


@dataclass
class MDLMTask(Task):
    """Pretraining or fine-tuning of :class:`MaDiSModel` (or, with ``model.architecture: ar``,
    the autoregressive baseline :class:`~madis.mdlm.ar.ARBaseline`) on token shards.

    Build it with :meth:`from_shards`.

    Attributes:
        stage: ``pretrain`` or ``finetune``.
        config: the ``model`` section.
        shards: token shard roots (``s3://...`` or directories); pretraining mixes the train
            splits of all of them, fine-tuning is given one.
        tokenizer: export URL of the tokenizer checkpoint the tokens come from.
        init_from: export URL of the checkpoint to start from (fine-tuning: pretraining's).
        motion_format: of every shard set.
        train_samples: train samples over all shard sets (for steps per epoch).
        splits: per shard set, samples per split.
        val_batches: validation batches per rank and shard set (0: the whole val split).
        val_batch_size: samples per validation batch.
        val_generate: also decode the val texts (``generate``, the config's sampler) and report
            position-wise token accuracy and length error of the generations.
        shuffle_buffer: the reader's shuffle buffer.
        job: free-form provenance stored in checkpoint metadata (profile, overrides).
    """

    stage: str
    config: ModelConfig
    shards: list[str]
    tokenizer: str
    init_from: str | None = None
    motion_format: str = ""
    train_samples: int = 0
    splits: list[dict[str, int]] = field(default_factory=list)
    val_batches: int = 0
    val_batch_size: int = 32
    val_generate: bool = True
    shuffle_buffer: int = 256
    job: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        self.name = f"mdlm_{self.stage}"

    @classmethod
    def from_shards(cls, stage: str, config: ModelConfig, shards: str | Sequence[str], *,
                    tokenizer: str | None = None, **kw) -> "MDLMTask":
        """A task over the token shard roots ``shards``; the tokenizer defaults to the one that
        wrote them (manifest ``tokenizer_export``).

        Raises:
            ValueError: see :func:`read_token_manifests`; no tokenizer recorded nor given.
            StorageError / FileNotFoundError: a manifest cannot be read.
        """
        roots = [shards] if isinstance(shards, str) else list(shards)
        # workers run elsewhere (Ray's working dir): a relative path would not resolve there
        roots = [r if "://" in r else str(Path(r).resolve()) for r in roots]
        manifests = read_token_manifests(roots)
        recorded = (manifests[0].get("tokenizer_export") or {}).get("url")
        tokenizer = tokenizer or recorded
        if not tokenizer:
            raise ValueError(f"{roots[0]} does not record its tokenizer checkpoint: pass one")
        splits = [{k: int(v["samples"]) for k, v in m["splits"].items()} for m in manifests]
        return cls(stage=stage, config=config, shards=roots, tokenizer=tokenizer,
                   motion_format=manifests[0]["format"],
                   train_samples=sum(s.get("train", 0) for s in splits), splits=splits, **kw)

    # -- Task interface ------------------------------------------------------------------------
    def build_model(self) -> MDLMTrainModule:
        model = init_model(self.config, load_tokenizer(self.tokenizer), self.init_from)
        return MDLMTrainModule(model, self.stage)

    def batches(self, *, rank, world_size, epoch, seed, batch_size):
        from madis.data.shards import collate

        n = self.config.num_positions
        group: list[dict] = []
        for s in mixed_samples(self.shards, [sp.get("train", 0) for sp in self.splits], "train",
                               rank=rank, world_size=world_size, seed=seed, epoch=epoch,
                               shuffle_buffer=self.shuffle_buffer):
            group.append(truncate_sample(s, n))
            if len(group) == batch_size:
                yield collate(group, with_tokens=True)
                group = []
        if group:
            yield collate(group, with_tokens=True)

    def loss(self, model, batch):
        return model(batch)

    def steps_per_epoch(self, *, world_size, batch_size):
        if not self.train_samples:
            return None
        return math.ceil(self.train_samples / world_size / batch_size)

    def batch_samples(self, batch):
        return len(batch["text"])

    def validation_batches(self, *, rank, world_size):
        """This rank's share of every shard set's val split, in batches of ``val_batch_size``
        (at most ``val_batches`` per shard set), samples cut to N positions."""
        from madis.data.shards import collate, iter_samples

        for root, sp in zip(self.shards, self.splits):
            if not sp.get("val"):
                continue
            samples = iter_samples(root, "val", rank=rank, world_size=world_size, shuffle=False,
                                   with_tokens=True)
            group, made = [], 0
            for s in samples:
                group.append(truncate_sample(s, self.config.num_positions))
                if len(group) == self.val_batch_size:
                    yield collate(group, with_tokens=True)
                    group, made = [], made + 1
                    if self.val_batches and made >= self.val_batches:
                        break
            else:
                if group:
                    yield collate(group, with_tokens=True)

    def validation_step(self, model, batch):
        """The stage's loss terms and masked-position body accuracy under fixed masks (seeded
        by the batch's keys, so the same at every checkpoint whichever rank holds the batch),
        and with ``val_generate`` the token accuracy and length error of the decoded val texts
        (:func:`token_accuracy`), decoded with the config's sampler and switches."""
        mdl = model.model
        seed = VAL_SEED + zlib.crc32("\n".join(batch["key"]).encode())
        g = torch.Generator(device=mdl.device).manual_seed(seed)
        _, metrics = mdl.loss(batch, self.stage, generator=g)
        b = len(batch["text"])
        out = {k: (v * b, b) for k, v in metrics.items()}
        if self.val_generate:
            gen = mdl.generate(batch["text"], batch["lang"])
            out["token_acc"] = token_accuracy(gen.tokens, batch["tokens"], batch["token_mask"])
            err = (gen.lengths.cpu() - batch["token_mask"].sum(1).cpu()).abs().sum()
            out["length_error"] = (err, b)
        return out

    def export(self, model, directory):
        """The model (``MaDiSModel.save_pretrained``) with a copy of its tokenizer in
        ``tokenizer/``, so an export alone is enough to generate motion."""
        # DeepSpeed keeps parameters as views into flat buffers, which safetensors refuses to
        # save (the tied embedding / LM head then "cover" no whole storage): save a copy whose
        # parameters own their memory, the tied pair still one Parameter.
        plain = copy.deepcopy(model.model)
        for p in plain.parameters():
            p.data = p.data.clone()
        plain.save_pretrained(directory)
        plain.tokenizer.save_pretrained(str(Path(directory) / TOKENIZER_DIR))

    def describe(self):
        return {"name": self.name, "stage": self.stage, "model": to_dict(self.config),
                "shards": list(self.shards), "splits": self.splits,
                "tokenizer_checkpoint": self.tokenizer, "init_from": self.init_from,
                "motion_format": self.motion_format, "job": self.job}


def token_accuracy(generated: torch.Tensor, reference: torch.Tensor,
                   reference_mask: torch.Tensor) -> tuple[int, int]:
    """Position-wise token accuracy counts of generations against references.

    Counts, over the reference's real positions ``i < n_ref`` and its three parts, how many
    generated tokens equal the reference token at the same position (a generation that ended
    early scores nothing on the positions it lacks).

    Args:
        generated: ``[B, N, 3]`` codes, -1 from the first [EOS] on.
        reference: ``[B, N', 3]`` codes, padding -1.
        reference_mask: bool ``[B, N']``.
    Returns:
        ``(hits, total)``; the accuracy is ``hits / total``.
    """
    generated, reference = generated.cpu(), reference.cpu()
    width = reference.shape[1]
    if generated.shape[1] < width:
        pad = generated.new_full((generated.shape[0], width - generated.shape[1], 3), -1)
        generated = torch.cat([generated, pad], 1)
    same = (generated[:, :width] == reference) & reference_mask.cpu()[..., None]
    return int(same.sum()), int(reference_mask.sum()) * 3
