"""SALT data selection (Rawat et al., section on SALT_DS): the frozen teacher scores every
training sequence, and the distillation stage draws only from the highest-scoring fraction.

Score of a sequence: for each position, the teacher's loss -log p(true next token), kept only
where the true next token is among the teacher's top-k predictions; the score is the median of
the kept losses. High scores are tokens that are hard yet learnable by the teacher. A sequence
with no kept token scores -inf (never preferred).
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def score_sequences(teacher, sequences: torch.Tensor, *, top_k: int = 10, batch_size: int = 32,
                    device: torch.device | str = "cpu", progress=None) -> torch.Tensor:
    """(N,) float32 scores of (N, seq_len + 1) token sequences (inputs [:, :-1], targets [:, 1:])."""
    scores = torch.empty(len(sequences), dtype=torch.float32)
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start:start + batch_size].to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        logits = teacher(input_ids=x).logits.float()
        scores[start:start + len(batch)] = score_from_logits(logits, y, top_k).cpu()
        if progress is not None:
            progress(len(batch))
    return scores


def score_from_logits(logits: torch.Tensor, targets: torch.Tensor, top_k: int) -> torch.Tensor:
    """Per-row median of the token losses whose target is in the top-k of the logits."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    top = torch.topk(logprobs, min(top_k, logits.shape[-1]), dim=-1).indices
    return score_from_logprobs(logprobs, targets, top)


def score_from_logprobs(logprobs: torch.Tensor, targets: torch.Tensor, top_indices: torch.Tensor) -> torch.Tensor:
    """score_from_logits from the log-softmax (B, T, V) and the top-k ids at each position
    (B, T, k), for a caller that has both at hand (the teacher cache's pass)."""
    token_loss = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    in_top_k = (top_indices == targets.unsqueeze(-1)).any(-1)
    kept = torch.where(in_top_k, token_loss, torch.full_like(token_loss, math.nan))
    score = torch.nanquantile(kept, 0.5, dim=1)
    return torch.nan_to_num(score, nan=-math.inf)


def select_top_fraction(scores: torch.Tensor, ids: torch.Tensor, fraction: float) -> torch.Tensor:
    """The ids of the highest-scoring ceil(fraction * N) sequences, best first (ties: lower id)."""
    order = sorted(range(len(ids)), key=lambda i: (-float(scores[i]), int(ids[i])))
    keep = max(1, math.ceil(fraction * len(ids)))
    return ids[torch.tensor(order[:keep], dtype=torch.long)]
