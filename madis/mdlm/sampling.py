"""Reverse process samplers (docs/design.md#the-sampler): vanilla unmasking and UTC.

Both are one loop, :func:`unmask`: vanilla unmasking is UTC with no checkpoints (a single stage
holding every position). The loop is model-agnostic: it calls ``predict`` for the logits of the
positions it is about to decide, so the same code serves the MDLM, tests with scripted
predictors and any future backbone.

Sign positions are held as ``tokens [B, N, 3]`` in head space: column 0 is the body head's class
(``0..K_B-1`` codes, ``K_B`` = ``[EOS]``, ``K_B+1`` = ``[PAD]``), columns 1-2 the hand codes;
``masked [B, N]`` says which positions are still ``[M]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from madis.mdlm.masking import utc_stage_of_positions

#: predict(tokens [B,N,3], masked [B,N], query [B,N]) -> three logits tensors [Q, C_p], one row per
#: True entry of ``query`` in row-major order (``query.nonzero()``), parts (body, lhand, rhand).
Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Sequence[torch.Tensor]]


def llada_schedule(num_tokens: int, num_steps: int) -> list[int]:
    """Tokens unmasked per step (LLaDA ``get_num_transfer_tokens``): ``n // K`` each, the
    remainder one by one to the first steps. ``llada_schedule(25, 6) == [5, 4, 4, 4, 4, 4]``.

    Raises:
        ValueError: ``num_steps < 1`` or ``num_tokens < 0``.
    """
    if num_steps < 1 or num_tokens < 0:
        raise ValueError(f"need num_steps >= 1 and num_tokens >= 0, got {num_steps}, {num_tokens}")
    base, rem = divmod(num_tokens, num_steps)
    return [base + (1 if j < rem else 0) for j in range(num_steps)]


def split_steps(stage_sizes: Sequence[int], num_steps: int) -> list[int]:
    """Share K steps among UTC stages in proportion to their token counts (largest remainder,
    at least one step per stage). ``split_steps([25, 25, 50], 25) == [6, 6, 13]``.

    Raises:
        ValueError: fewer steps than stages.
    """
    n_stages = len(stage_sizes)
    if num_steps < n_stages:
        raise ValueError(f"{num_steps} steps cannot cover {n_stages} UTC stages")
    total = sum(stage_sizes)
    exact = [num_steps * n / total for n in stage_sizes]
    steps = [max(1, math.floor(e)) for e in exact]
    # hand out (or take back) steps by largest (smallest) fractional remainder, stable by index
    while sum(steps) < num_steps:
        j = max(range(n_stages), key=lambda s: (exact[s] - steps[s], -s))
        steps[j] += 1
    while sum(steps) > num_steps:
        j = min((s for s in range(n_stages) if steps[s] > 1), key=lambda s: (exact[s] - steps[s], s))
        steps[j] -= 1
    return steps


def stage_sizes(num_positions: int, checkpoints: Sequence[float]) -> list[int]:
    """Positions per UTC stage: ``stage_sizes(100, [0.75, 0.5]) == [25, 25, 50]``."""
    stage = utc_stage_of_positions(num_positions, checkpoints)
    return [int((stage == k).sum()) for k in range(len(checkpoints) + 1)]


def utc_schedule(num_positions: int, num_steps: int,
                 checkpoints: Sequence[float]) -> list[list[int]]:
    """Tokens per step, per stage: K split by :func:`split_steps`, each stage's tokens by
    :func:`llada_schedule`. With no checkpoints this is the vanilla schedule (one stage)."""
    sizes = stage_sizes(num_positions, checkpoints)
    return [llada_schedule(n, k) for n, k in zip(sizes, split_steps(sizes, num_steps))]


def _orders(counts: Sequence[int]) -> int:
    n = sum(counts)
    out = math.factorial(n)
    for k in counts:
        out //= math.factorial(k)
    return out


def num_orders_vanilla(num_positions: int, num_steps: int) -> int:
    """Eq. 6: ``N! / prod_j k_j!`` unmasking orders of vanilla unmasking with LLaDA's schedule
    (about 10^123.5 for N=100, K=25). Exact Python integer."""
    return _orders(llada_schedule(num_positions, num_steps))


def num_orders_utc(num_positions: int, num_steps: int,
                   checkpoints: Sequence[float] = (0.75, 0.5)) -> int:
    """Eq. 7: ``prod_stages n_s! / prod_{j in s} k_j!`` for UTC's schedule. Exact integer."""
    out = 1
    for counts in utc_schedule(num_positions, num_steps, checkpoints):
        out *= _orders(counts)
    return out


@dataclass
class SamplerOutput:
    """Result of :func:`unmask`.

    Attributes:
        tokens: ``[B, N, 3]`` head-space tokens, every position decided.
        trace: masked-state ``[B, N]`` after every step when ``record=True`` (else empty).
        steps: ``[B]`` int64, unmasking steps that committed at least one of the row's
            positions (the row's ``steps_used``; K or fewer with the fixed schedule).
    """

    tokens: torch.Tensor
    trace: list[torch.Tensor]
    steps: torch.Tensor | None = None


#: one generator for a whole batch, or one per batch row (each row's draws then depend on that
#: row alone: a request's sample does not depend on the requests batched with it)
Generators = "torch.Generator | Sequence[torch.Generator] | None"


def _uniform(shape: tuple[int, ...], generator, rows: torch.Tensor | None,
             device: torch.device) -> torch.Tensor:
    """``U(0, 1)`` noise ``shape = (Q, C)``; with per-row generators, the draws of query rows
    ``q`` with ``rows[q] == b`` (grouped by row, as ``query.nonzero()`` gives them) come from
    ``generator[b]``."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, device=device)
    if rows is None:
        raise ValueError("per-row generators need the batch row of every logits row")
    counts = torch.bincount(rows.cpu(), minlength=len(generator)).tolist()
    parts = [torch.rand((c, *shape[1:]), generator=g, device=device)
             for g, c in zip(generator, counts) if c]
    return torch.cat(parts) if parts else torch.rand(shape, device=device)


def pick_tokens(logits: torch.Tensor, temperature: float, generator=None,
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one class per row: greedy, or Gumbel-max at ``temperature`` (a sample of
    softmax(logits / temperature), as LLaDA's ``add_gumbel_noise``). Returns the class and its
    log-probability under the un-noised model (the confidence, LLaDA low_confidence).

    ``generator``: a ``torch.Generator``, None, or one generator per batch row with ``rows``
    ``[Q]`` (the batch row of each logits row, grouped by row) (see :data:`Generators`)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    if temperature > 0:
        u = _uniform(tuple(logp.shape), generator, rows, logp.device).clamp_(1e-20, 1.0)
        choice = (logp + temperature * -torch.log(-torch.log(u))).argmax(-1)
    else:
        choice = logp.argmax(-1)
    return choice, logp.gather(-1, choice[:, None])[:, 0]


#: ``threshold_floor`` values of :func:`unmask`
THRESHOLD_FLOORS = ("schedule", "one")


def check_pins(pins: torch.Tensor, codebook_sizes: Sequence[int]) -> None:
    """Check pinned tokens (see :func:`unmask`).

    Args:
        pins: ``[B, N, 3]`` int; -1 = not pinned, else a code of the part's codebook, and in
            the body column ``K_B`` = ``[EOS]`` (the sequence ends there).
        codebook_sizes: ``(K_B, K_L, K_R)``.
    Raises:
        ValueError: wrong shape, an id outside its part's codebook (``[PAD]`` included), or a
            pin at or after a pinned ``[EOS]`` (nothing follows the end; the hands of the
            ``[EOS]`` position are not tokens).
    """
    if pins.ndim != 3 or pins.shape[-1] != 3:
        raise ValueError(f"pins must be [B, N, 3], got {tuple(pins.shape)}")
    names = ("body", "lhand", "rhand")
    for p, k in enumerate(codebook_sizes):
        top = k + 1 if p == 0 else k  # body: [EOS] too
        bad = (pins[..., p] < -1) | (pins[..., p] >= top)
        if bad.any():
            b, i = bad.nonzero()[0].tolist()
            raise ValueError(f"pinned {names[p]} id {int(pins[b, i, p])} at position {i} is "
                             f"outside the codebook [0, {k})")
    kb = codebook_sizes[0]
    n = pins.shape[1]
    pos = torch.arange(n, device=pins.device)
    eos_at = torch.where(pins[..., 0] == kb, pos, n).min(1).values  # b
    pinned = pins >= 0
    pinned[..., 0] &= pins[..., 0] != kb
    late = pinned.any(-1) & (pos[None, :] >= eos_at[:, None])
    if late.any():
        b, i = late.nonzero()[0].tolist()
        raise ValueError(f"a pin at position {i} is at or after the pinned [EOS] at position "
                         f"{int(eos_at[b])}")


def pinned_state(pins: torch.Tensor, body_classes: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sampler's start from pinned tokens (checked by :func:`check_pins`).

    Returns:
        (tokens ``[B, N, 3]``, masked ``[B, N]``, fixed ``[B, N, 3]`` -- the pinned parts --,
        barred ``[B, N]`` -- positions where the body may not be ``[EOS]``/``[PAD]``, every
        position up to the last pinned one or before a pinned ``[EOS]`` --, end ``[B]`` -- the
        pinned ``[EOS]`` position, -1 where none).
        A position with all three parts pinned starts committed, and so do a pinned ``[EOS]``
        and the ``[PAD]`` positions after it; a partly pinned position starts masked.
    """
    eos = body_classes - 2
    n = pins.shape[1]
    pos = torch.arange(n, device=pins.device)
    fixed = pins >= 0
    is_eos = pins[..., 0] == eos
    end = torch.where(is_eos, pos, n).min(1).values  # b
    after = pos[None, :] > end[:, None]
    tokens = pins.clamp(min=0)
    tokens[..., 0] = torch.where(after, eos + 1, tokens[..., 0])
    fixed = fixed | (after | is_eos)[..., None]
    masked = ~fixed.all(-1)
    last = torch.where(fixed.any(-1) & ~(after | is_eos), pos, -1).max(1).values  # b
    limit = torch.where(end < n, end, last + 1)
    barred = pos[None, :] < limit[:, None]
    return tokens, masked, fixed, barred, torch.where(end < n, end, -1)


def unmask(predict: Predictor, batch_size: int, num_positions: int, num_steps: int,
           checkpoints: Sequence[float], *, body_classes: int, temperature: float = 0.0,
           generator=None, drop_after_eos: bool = False,
           length_first: bool = False, device: torch.device | str | None = None,
           on_stage_start: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
           on_stage_end: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
           pins: torch.Tensor | None = None, threshold: float | None = None,
           threshold_floor: str = "schedule", record: bool = False) -> SamplerOutput:
    """Confidence-based unmasking with temporal checkpoints (paper 3.3.1; LLaDA's
    ``generate`` with ``remasking='low_confidence'``).

    Starts from all N positions masked. Stage k (see :func:`utc_stage_of_positions`) gets its
    share of the K steps; at each step the still-masked positions of the current stage are
    predicted, each takes its greedy or Gumbel choice per part, and the ``k_j`` with the highest
    confidence -- the chosen tokens' mean log-probability, docs/design.md#the-sampler
    -- are committed. Committed positions never change (eq. 2). ``checkpoints=[]`` is vanilla
    unmasking.

    Args:
        predict: see :data:`Predictor`.
        body_classes: K_B + 2 (codes, ``[EOS]``, ``[PAD]``).
        generator: for ``temperature`` > 0: one ``torch.Generator``, or one per row
            (:data:`Generators`).
        drop_after_eos: after a step commits ``[EOS]``/``[PAD]`` at position e, every position
            after e is committed as ``[PAD]`` (output-changing speed-up).
        length_first: decide the length before any code (one extra all-position prediction
            at the start): ``L = round(sum_i (1 - p_i))``, ``p_i`` the body head's probability
            of ``[EOS]``/``[PAD]`` at position i from the all-masked state (the expected length
            when the special classes mark a suffix), clamped to ``1..N``. ``[EOS]`` is
            committed at L and ``[PAD]`` after it, and the special classes are barred before L.
            The paper's rule (off) ends the sequence at the first special token committed
            anywhere, which the minimum over many uncertain positions biases short.
        on_stage_start: called as ``(stage, tokens, masked)`` before each stage's first step.
        on_stage_end: called as ``(stage, tokens, masked)`` after each stage's last step (the
            coarse-to-fine checkpoints a stream shows; docs/decoding.md).
        pins: ``[B, N, 3]`` int, -1 where free (infilling and editing, docs/decoding.md;
            :func:`check_pins` gives the rules). The MoP layer embeds a position from its
            three tokens at once, so a position is masked or unmasked as a whole: a position
            with every part pinned starts committed; a partly pinned one stays ``[M]`` until
            the schedule decides it, and then its pinned parts are kept and only its free parts
            are chosen (its confidence is the mean over its free parts). ``[EOS]``/``[PAD]``
            are barred up to the last pinned position (a pin is never cut off), and a pinned
            ``[EOS]`` fixes the length (also under ``length_first``). Each stage spreads its
            own still-masked positions over its steps (per row, LLaDA's schedule).
        threshold: confidence-threshold decoding (Fast-dLLM's parallel decoding, inside UTC's
            stages): a step also commits every queried position whose confidence passes
            ``log(threshold)``, i.e. the geometric mean of its parts' probabilities is at least
            ``threshold`` (a probability in (0, 1]; for a position chosen as ``[EOS]``/``[PAD]``
            the body's probability alone, its hands being no tokens); stage boundaries are
            kept. None: the fixed schedule.
        threshold_floor: the least a threshold step commits: ``"schedule"`` -- LLaDA's count
            for the stage's remaining positions over its remaining steps, so a stage never
            takes more steps than its fixed share and the steps used are at most K (a threshold
            above 1 gives the fixed schedule exactly) -- or ``"one"`` (Fast-dLLM: at least one
            position per step; a stage runs until it is decided, up to one step per position).
        record: keep the masked state after every step in ``trace``.
    Returns:
        :class:`SamplerOutput`; tokens of positions after the first ``[EOS]`` are meaningless,
        use :func:`truncate_at_eos`.
    Raises:
        ValueError: ``threshold`` outside (0, inf) or an unknown ``threshold_floor``.
    """
    if threshold is not None and not threshold > 0:
        raise ValueError(f"threshold must be > 0 (a probability; > 1 never passes), got {threshold}")
    if threshold_floor not in THRESHOLD_FLOORS:
        raise ValueError(f"threshold_floor must be one of {THRESHOLD_FLOORS}, got {threshold_floor!r}")
    eos = body_classes - 2
    stage_of = utc_stage_of_positions(num_positions, checkpoints, device)  # n
    tokens = torch.zeros(batch_size, num_positions, 3, dtype=torch.long, device=device)
    masked = torch.ones(batch_size, num_positions, dtype=torch.bool, device=device)
    pos = torch.arange(num_positions, device=device)
    steps_used = torch.zeros(batch_size, dtype=torch.long, device=device)
    trace: list[torch.Tensor] = []
    fixed = barred = None
    if pins is not None:
        pins = pins.to(device)
        tokens, masked, fixed, barred, pinned_end = pinned_state(pins, body_classes)
        pins = tokens.clone()
    if length_first:
        body = predict(tokens, masked, masked)[0].float()
        p_special = torch.softmax(body, -1)[:, eos:].sum(-1).view(batch_size, num_positions)
        length = (1.0 - p_special).sum(1).round().long().clamp(1, num_positions)  # b
        if pins is not None:  # never before a pin; exactly at a pinned [EOS]
            length = torch.where(pinned_end >= 0, pinned_end, torch.maximum(length, barred.sum(1)))
        after = pos[None, :] - length[:, None]  # b, n
        tokens[..., 0] = torch.where(after == 0, eos, torch.where(after > 0, eos + 1, 0))
        masked = after < 0
        if pins is not None:
            tokens = torch.where(fixed & (after < 0)[..., None], pins, tokens)
            masked &= ~fixed.all(-1)
    # the fixed schedule as before, unless pins or a threshold make the counts per row
    dynamic = pins is not None or threshold is not None
    log_thr = math.log(threshold) if threshold is not None else None
    for stage, counts in enumerate(utc_schedule(num_positions, num_steps, checkpoints)):
        in_stage = (stage_of == stage)[None, :]  # 1, n
        if on_stage_start is not None:
            on_stage_start(stage, tokens, masked)
        budget = len(counts)
        if threshold is not None and threshold_floor == "one":
            budget = int(in_stage.sum())
        for j in range(budget):
            query = masked & in_stage  # b, n
            k = counts[j] if not dynamic else None
            if k == 0 or not query.any():
                if dynamic:
                    break
                if record:
                    trace.append(masked.clone())
                continue
            logits = predict(tokens, masked, query)
            if length_first or barred is not None:  # no special class before a decided end
                bar = torch.ones(int(query.sum()), dtype=torch.bool, device=query.device) \
                    if length_first else barred[query]
                body = logits[0].clone()
                body[:, eos:] = body[:, eos:].masked_fill(bar[:, None], -math.inf)
                logits = (body, *logits[1:])
            rows = query.nonzero()[:, 0] if not isinstance(generator, (torch.Generator, type(None))) \
                else None
            picks = [pick_tokens(lg, temperature, generator, rows) for lg in logits]
            choice = torch.stack([c for c, _ in picks], -1)  # q, 3
            logp = torch.stack([lp for _, lp in picks], -1)  # q, 3
            if fixed is None:
                conf_q = logp.mean(-1)  # q
            else:  # a partly pinned position: its pinned parts are given, not chosen
                free = ~fixed[query]
                choice = torch.where(free, choice, pins[query])
                conf_q = (logp * free).sum(-1) / free.sum(-1).clamp(min=1)
            conf = torch.full(masked.shape, -math.inf, device=masked.device)
            conf[query] = conf_q
            proposal = tokens.clone()
            proposal[query] = choice
            if not dynamic:
                top = conf.topk(min(k, num_positions), dim=1)  # b, k
                commit = torch.zeros_like(masked)
                commit.scatter_(1, top.indices, top.values > -math.inf)
            else:
                left = query.sum(1)  # b
                if threshold is not None and threshold_floor == "one":
                    k_rows = (left > 0).long()
                else:  # LLaDA's count for what is left: ceil(left / steps left)
                    k_rows = -(-left // (budget - j))
                if log_thr is not None:
                    # an [EOS]/[PAD] position's hands are not tokens (never trained): its body
                    # alone says how sure it is
                    sure = torch.where(choice[:, 0] >= eos, logp[:, 0], conf_q) >= log_thr
                    passes = torch.zeros_like(masked)
                    passes[query] = sure
                    k_rows = torch.maximum(k_rows, passes.sum(1))
                    conf = torch.where(passes, 1.0 + conf.exp(), conf)  # ranked first
                # topk as the fixed schedule takes it: with the same counts, the same picks
                top = conf.topk(int(k_rows.max().clamp(min=1)), dim=1)  # b, k
                take = (top.values > -math.inf) & (pos[None, : top.indices.shape[1]] < k_rows[:, None])
                commit = torch.zeros_like(masked)
                commit.scatter_(1, top.indices, take)
            steps_used += commit.any(1)
            tokens = torch.where(commit[..., None], proposal, tokens)
            masked = masked & ~commit
            if drop_after_eos:
                ended = (~masked) & (tokens[..., 0] >= eos)  # b, n
                first = torch.where(ended, pos, num_positions).min(1).values  # b
                after = pos[None, :] > first[:, None]
                tokens[..., 0] = torch.where(after, eos + 1, tokens[..., 0])
                masked = masked & ~after
            if record:
                trace.append(masked.clone())
        if on_stage_end is not None:
            on_stage_end(stage, tokens, masked)
    return SamplerOutput(tokens, trace, steps_used)


def truncate_at_eos(tokens: torch.Tensor, body_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Discard everything from the first ``[EOS]`` (or ``[PAD]``) on (paper 4, LLaDA).

    Args:
        tokens: ``[B, N, 3]`` head-space tokens; body classes >= ``body_codes`` are special.
    Returns:
        (codes ``[B, N, 3]`` int64 with -1 from the first special position on,
        lengths ``[B]`` int64 = number of sign positions kept).
    """
    n = tokens.shape[1]
    pos = torch.arange(n, device=tokens.device)
    special = tokens[..., 0] >= body_codes
    lengths = torch.where(special, pos, n).min(1).values
    keep = pos[None, :] < lengths[:, None]
    return torch.where(keep[..., None], tokens, torch.full_like(tokens, -1)), lengths
