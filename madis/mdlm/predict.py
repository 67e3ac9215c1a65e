"""Generations for a whole split, in the predictions format that ``madis eval`` scores."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch


@torch.no_grad()
def predict_references(model, references: Mapping[str, Any], batch_size: int = 64,
                       **generate_kwargs) -> tuple[dict, int]:
    """Generate the text of every reference with ``model`` and decode the tokens to motion with
    its tokenizer.

    Args:
        model: a generator with a tokenizer attached (:func:`madis.mdlm.exports.load_generator`).
        references: ``{key: Reference}`` (``text``, ``lang``), e.g.
            :func:`madis.metrics.evaluation.load_references`.
        generate_kwargs: passed to ``model.generate`` (``num_steps``, ``sampler``, ...).
    Returns:
        ``({key: Prediction}, number of empty generations)``. A generation that puts [EOS]
        first has no tokens and the still mean pose of ``decode_motion``
        (docs/design.md#empty-generations); it is counted.
    """
    from madis.metrics.predictions import Prediction

    keys = list(references)
    preds, empty = {}, 0
    for a in range(0, len(keys), batch_size):
        chunk = keys[a: a + batch_size]
        out = model.generate([references[k].text for k in chunk],
                             [references[k].lang for k in chunk], **generate_kwargs)
        motions = model.decode_motion(out)
        for i, k in enumerate(chunk):
            n = int(out.lengths[i])
            empty += int(n == 0)
            preds[k] = Prediction(motions[i], out.tokens[i, :n].cpu().numpy().astype(np.int64))
    return preds, empty
