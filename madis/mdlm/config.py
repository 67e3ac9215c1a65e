"""``ModelConfig``: the MDLM's sizes, losses, masking and decoding switches (section ``model``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from madis.config import ConfigError, check_bounds

EMBEDDINGS = ("dense", "simple_avg", "sparse_top1", "sparse_top2")
SAMPLERS = ("utc", "vanilla")
MOP_INITS = ("default", "text_scale")
TEXT_POSITIONS = ("sequential", "aligned")
ARCHITECTURES = ("mdlm", "ar")


@dataclass
class ModelConfig:
    """Hyper-parameters of MaDiS's masked diffusion language model (paper 3.2, 3.3, 4).

    Architecture:
        architecture: ``mdlm`` (MaDiS: a non-causal Qwen3 trained as a masked diffusion LM,
            :class:`~madis.mdlm.model.MaDiSModel`) or ``ar``: the autoregressive baseline of
            the paper's Table 1 at the same sizes (a causal Qwen3 with SOKE-style multi-head
            decoding, :class:`~madis.mdlm.ar.ARBaseline`; docs/design.md#the-autoregressive-baseline).
            The jobs train either through the one loop (``ray_jobs/finetune.py --init none
            model.architecture=ar``); its exports load wherever a MaDiS export does. The
            masking, UTC, embedding and MDLM decoding fields do not apply to ``ar``.

    Backbone:
        backbone: ``"tiny"`` builds a randomly initialised Qwen3 from the ``hidden_size`` ...
            fields below (CPU profile); anything else is a Hugging Face id or a local directory
            of Qwen3 weights (``"Qwen/Qwen3-0.6B-Base"`` in the paper profile), loaded with
            ``from_pretrained``, its vocabulary extended with MaDiS's special and sign tokens.
        hidden_size, num_layers, num_heads, num_kv_heads, head_dim, intermediate_size,
            rope_theta: the tiny Qwen3's sizes (ignored for a pretrained backbone).
        dtype: parameter dtype of the backbone, ``float32`` or ``bfloat16``.
        text_tokenizer: ``"auto"`` (the backbone's Hugging Face tokenizer when it has one, else
            bytes) or ``"bytes"`` (built-in UTF-8 byte tokenizer, no download).
        text_template: how ``text`` and ``lang`` become the text prefix. The same letters sign
            differently in each sign language, so the language is written into the prompt as
            plain text (no new vocabulary, any tokenizer handles it); ``{lang}`` empty drops
            the tag. Default ``"[{lang}] {text}"``.
        max_text_tokens: text tokens kept (longer prompts are cut at the end), before ``[EOS]``.
        text_positions: ``sequential`` (the paper: RoPE positions ``0..L`` for the text, the
            sign positions after it) or ``aligned``: each text token at the position where its
            characters are expected to be signed (``positions_per_char`` sign positions per
            character, from the sign start), so that a sign position finds its letters at a
            short relative distance (see ``SignLanguageModel._aligned_row``). A departure from
            the paper for data whose signing follows the characters (fingerspelling).
        positions_per_char: sign positions per text character for ``aligned`` (the sample's
            letters last about 25 frames: 6.2 positions).

    Sequence and masking:
        num_positions: N, the sign positions after the text (paper 100; 4N frames).
        mask_eps: t ~ U(eps, 1] (docs/design.md#forward-process-eq-1, LLaDA's 1e-3).
        mask_text: pretraining also masks text tokens (paper Table 3 "Text" column).
        utc_checkpoints: noise levels of the UTC checkpoints (paper 3.3.1, default
            [0.75, 0.5]); each c means resolution 1/(1-c), so 1/(1-c) must be an integer and
            each stride must divide the previous. ``[0.75]``, ``[0.5]`` and ``[]`` give
            Table 4's ablation, for fine-tuning masks and the UTC sampler alike.
        text_attends_sign: full bidirectional attention (paper). ``False`` lets text attend only
            to text, which makes the text keys/values independent of the sign positions so
            decoding computes them once (``text_kv_cache``); this changes the model, so it is a
            training-time choice whose quality effect must be measured.

    Losses (docs/design.md#pretraining-losses-eq-3-5):
        token_weight, latent_weight, physical_weight: weights of eq. 3, 4, 5 (default 1.0).
        latent_loss, physical_loss: switch the latent / physical levels on (Table 3).
        finetune_lambda: lambda in ``L_ft = L_token + lambda (L_latent + L_phys)`` (0.5).
        latent_mlp_hidden: hidden width of the three latent MLPs phi_p (0: d_model).

    Sign embedding (paper 3.3.2):
        embedding: ``dense`` (MoP, the paper's; default), ``simple_avg`` (SOKE's mean of three
            learned part embeddings), ``sparse_top1`` / ``sparse_top2`` (top-k gates
            renormalised; cpu-tiny: ``sparse_top1``, docs/signing.md#sign-embedding).
        train_codebooks: fine-tune the MoP's copy of the tokenizer codebooks (frozen by default).
        mop_init: ``default`` (PyTorch's Linear initialisation of ``FC_p``, the paper's code) or
            ``text_scale`` (``FC_p`` rescaled at initialisation so sign embeddings start at the
            root mean square of the backbone's text rows; see
            :meth:`~madis.mdlm.embedding.SignEmbedding.match_scale`).

    Decoding defaults (overridable per ``generate`` call):
        sampler: ``utc`` or ``vanilla``; num_steps: K (paper 25); temperature: 0 greedy, > 0
            Gumbel-max sampling at that temperature.
        logits_masked_only: compute head logits only at the positions being decoded
            (exact: same outputs).
        text_kv_cache: compute the text prefix's keys/values once per sentence; exact, and only
            possible when ``text_attends_sign`` is False (ignored otherwise).
        drop_after_eos: once ``[EOS]`` is committed at position e, positions after e become
            ``[PAD]`` and leave the computation (changes outputs: trained models saw them).
        length_first: decide the length first, from the all-masked prediction (expected
            count of non-special positions), then unmask the codes before it (changes outputs;
            off is the paper's first-[EOS] rule; see :func:`madis.mdlm.sampling.unmask`).
        stage_kv_cache: approximate cache: at the start of each UTC stage compute every
            position once and, within the stage, recompute only the stage's own positions
            against the cached keys/values of the others (changes outputs).
        threshold: confidence-threshold decoding (Fast-dLLM style, inside UTC's stages): each
            step also commits every position of the stage whose confidence (geometric mean of
            its parts' probabilities) is at least this; ``null`` (default): the paper's fixed
            schedule (changes outputs; see :func:`madis.mdlm.sampling.unmask`).
        threshold_floor: least a threshold step commits: ``schedule`` (the fixed schedule's
            count for what is left: at most K steps) or ``one`` (Fast-dLLM's at least one).
        ar_embed_weights: the autoregressive baseline's (body, lhand, rhand) embedding average
            (SOKE: 0.2, 0.4, 0.4).
    """

    architecture: str = "mdlm"
    backbone: str = "tiny"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 384
    rope_theta: float = 1_000_000.0
    dtype: str = "float32"
    text_tokenizer: str = "auto"
    text_template: str = "[{lang}] {text}"
    max_text_tokens: int = 128
    text_positions: str = "sequential"
    positions_per_char: float = 6.0

    num_positions: int = 100
    mask_eps: float = 1e-3
    mask_text: bool = True
    utc_checkpoints: list[float] = field(default_factory=lambda: [0.75, 0.5])
    text_attends_sign: bool = True

    token_weight: float = 1.0
    latent_weight: float = 1.0
    physical_weight: float = 1.0
    latent_loss: bool = True
    physical_loss: bool = True
    finetune_lambda: float = 0.5
    latent_mlp_hidden: int = 0

    embedding: str = "dense"
    train_codebooks: bool = False
    mop_init: str = "default"

    sampler: str = "utc"
    num_steps: int = 25
    temperature: float = 0.0
    logits_masked_only: bool = True
    text_kv_cache: bool = True
    drop_after_eos: bool = False
    length_first: bool = False
    stage_kv_cache: bool = False
    threshold: float | None = None
    threshold_floor: str = "schedule"
    ar_embed_weights: tuple[float, float, float] = (0.2, 0.4, 0.4)

    def __post_init__(self) -> None:
        from madis.mdlm.masking import utc_strides

        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"model.architecture must be one of {ARCHITECTURES}, got "
                              f"{self.architecture!r}")
        if self.embedding not in EMBEDDINGS:
            raise ConfigError(f"model.embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.text_positions not in TEXT_POSITIONS:
            raise ConfigError(f"model.text_positions must be one of {TEXT_POSITIONS}, got "
                              f"{self.text_positions!r}")
        if not self.positions_per_char > 0:
            raise ConfigError(f"model.positions_per_char must be > 0, got {self.positions_per_char}")
        if self.mop_init not in MOP_INITS:
            raise ConfigError(f"model.mop_init must be one of {MOP_INITS}, got {self.mop_init!r}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"model.sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.threshold is not None and not float(self.threshold) > 0:
            raise ConfigError(f"model.threshold must be > 0 or null, got {self.threshold}")
        if self.threshold_floor not in ("schedule", "one"):
            raise ConfigError(f"model.threshold_floor must be schedule or one, got "
                              f"{self.threshold_floor!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"model.dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.text_tokenizer not in ("auto", "bytes"):
            raise ConfigError(f"model.text_tokenizer must be auto or bytes, got {self.text_tokenizer!r}")
        check_bounds(self, "model",
                     at_least_one=("num_positions", "num_steps", "max_text_tokens", "hidden_size",
                                   "num_layers", "num_heads", "num_kv_heads", "head_dim",
                                   "intermediate_size"),
                     non_negative=("temperature",))
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("model.num_heads must be a multiple of model.num_kv_heads")
        if not 0.0 < self.mask_eps < 1.0:
            raise ConfigError(f"model.mask_eps must be in (0, 1), got {self.mask_eps}")
        try:
            self.utc_checkpoints = [float(c) for c in self.utc_checkpoints]
            utc_strides(self.utc_checkpoints)
        except ValueError as e:
            raise ConfigError(f"model.utc_checkpoints: {e}") from None
        self.ar_embed_weights = tuple(float(w) for w in self.ar_embed_weights)  # type: ignore[assignment]
        if len(self.ar_embed_weights) != 3:
            raise ConfigError("model.ar_embed_weights must hold three weights (body, lhand, rhand)")
        if "{text}" not in self.text_template:
            raise ConfigError("model.text_template must contain {text}")
