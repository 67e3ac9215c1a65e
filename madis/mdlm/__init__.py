"""MaDiS's masked diffusion language model (no Ray here).

Public API::

    from madis.mdlm import MaDiSModel, ARBaseline, ModelConfig, load_pretrained
    model = MaDiSModel(cfg, tokenizer)                       # cfg = section(tree, "model", ModelConfig)
    loss, metrics = model.loss(batch, stage="pretrain")      # or "finetune"
    out = model.generate(texts, langs, num_steps=25)         # out.tokens [B, N, 3], out.lengths [B]
    model.save_pretrained(dir); MaDiSModel.from_pretrained(dir, tokenizer)

docs/design.md#notation and the sections after it; see each module for its equation. Names are
imported on first use (:mod:`madis.utils.lazy`), so ``madis.mdlm.cli`` and ``madis.mdlm.text``
load without torch or transformers.
"""

from madis.utils.lazy import lazy_exports

# imported on first use: the model modules load transformers (seconds), which neither
# `madis --help` nor a user of the byte tokenizer alone should pay for
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "ar": ("ARBaseline",),
    "base": ("Generation", "SignLanguageModel", "TextBatch", "load_pretrained", "model_class"),
    "config": ("ModelConfig",),
    "masking": ("sample_mask_ratio", "uniform_mask", "utc_index_mask", "utc_stage_of_positions",
                "utc_strides"),
    "model": ("MaDiSModel",),
    "sampling": ("check_pins", "llada_schedule", "num_orders_utc", "num_orders_vanilla", "split_steps",
                 "truncate_at_eos", "unmask", "utc_schedule"),
    "text": ("ByteTokenizer", "HFTextTokenizer", "format_prompt"),
    "vocab": ("SignVocab",),
})
