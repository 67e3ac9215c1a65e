"""Generations for a whole split, in the predictions format that ``madis eval`` scores."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from madis.motion.base import FRAMES_PER_POSITION


@torch.no_grad()
def predict_references(model, references: Mapping[str, Any], batch_size: int = 64,
                       **generate_kwargs) -> tuple[dict, int]:
    """Generate the text of every reference with ``model`` and decode the tokens to motion with
    its tokenizer.

    Args:
        model: a generator with a tokenizer attached (:func:`madis.mdlm.task.load_generator`).
        references: ``{key: Reference}`` (``text``, ``lang``), e.g.
            :func:`madis.metrics.evaluation.load_references`.
        generate_kwargs: passed to ``model.generate`` (``num_steps``, ``sampler``, ...).
    Returns:
        ``({key: Prediction}, number of empty generations)``. A generation that puts [EOS]
        first has no frames; it gets one position (4 frames) of the tokenizer's mean pose and
        no tokens, so that DTW-JPE stays defined, and is counted.
    """
    from madis.metrics.predictions import Prediction

    keys = list(references)
    preds, empty = {}, 0
    for a in range(0, len(keys), batch_size):
        chunk = keys[a: a + batch_size]
        out = model.generate([references[k].text for k in chunk],
                             [references[k].lang for k in chunk], **generate_kwargs)
        motion = model.tokenizer.decode(out.tokens)
        for i, k in enumerate(chunk):
            n = int(out.lengths[i])
            if n == 0:
                empty += 1
                frames = model.tokenizer.denormalize(torch.zeros(1, FRAMES_PER_POSITION, motion.shape[-1]))[0]
                tokens = np.zeros((0, 3), np.int64)
            else:
                frames = motion[i, : FRAMES_PER_POSITION * n]
                tokens = out.tokens[i, :n].cpu().numpy()
            preds[k] = Prediction(frames.cpu().numpy(), tokens)
    return preds, empty
