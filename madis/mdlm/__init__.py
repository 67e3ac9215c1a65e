"""MaDiS's masked diffusion language model (no Ray here).

Public API::

    from madis.mdlm import MaDiSModel, ARBaseline, ModelConfig, load_pretrained
    model = MaDiSModel(cfg, tokenizer)                       # cfg = section(tree, "model", ModelConfig)
    loss, metrics = model.loss(batch, stage="pretrain")      # or "finetune"
    out = model.generate(texts, langs, num_steps=25)         # out.tokens [B, N, 3], out.lengths [B]
    model.save_pretrained(dir); MaDiSModel.from_pretrained(dir, tokenizer)

SPEC sections "Notation" to "MoP embedding layer"; see each module for its equation.
"""

from madis.mdlm.ar import ARBaseline
from madis.mdlm.base import Generation, SignLanguageModel, TextBatch, load_pretrained
from madis.mdlm.config import ModelConfig
from madis.mdlm.masking import (
    sample_mask_ratio,
    uniform_mask,
    utc_index_mask,
    utc_stage_of_positions,
    utc_strides,
)
from madis.mdlm.model import MaDiSModel
from madis.mdlm.sampling import (
    llada_schedule,
    num_orders_utc,
    num_orders_vanilla,
    split_steps,
    truncate_at_eos,
    unmask,
    utc_schedule,
)
from madis.mdlm.text import ByteTokenizer, HFTextTokenizer, format_prompt
from madis.mdlm.vocab import SignVocab

__all__ = [
    "ARBaseline", "ByteTokenizer", "Generation", "HFTextTokenizer", "MaDiSModel", "ModelConfig",
    "SignLanguageModel", "SignVocab", "TextBatch", "format_prompt", "llada_schedule",
    "load_pretrained", "num_orders_utc", "num_orders_vanilla", "sample_mask_ratio", "split_steps",
    "truncate_at_eos", "uniform_mask", "unmask", "utc_index_mask", "utc_schedule",
    "utc_stage_of_positions", "utc_strides",
]
