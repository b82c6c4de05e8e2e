"""The ranking objective: what controllers maximise for a candidate's accuracy."""

from __future__ import annotations

# Candidates are ranked by accuracy, ties broken by validation loss: a small validation split
# gives few distinct accuracies (the default digits-affine split: steps of 1/179), and without
# the tie-break a larger model that only lowers the loss would look no better. The weight keeps
# the loss term below half an accuracy step, so it never reorders different accuracies.
LOSS_TIE_BREAK = 1e-3
_MAX_TIE_LOSS = 2.5


def ranking_score(accuracy: float, loss: float) -> float:
    """Accuracy with the validation loss as a tie-break (what controllers maximise)."""
    return accuracy - LOSS_TIE_BREAK * min(loss, _MAX_TIE_LOSS)
