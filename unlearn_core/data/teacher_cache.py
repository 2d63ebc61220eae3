"""PUBG's cached teacher: per-row top-k log-probs over the answer tokens, laid out for the loss.

Shards store, per forget row, the teacher's top-k ids and log-probs for each answer token of the
guide view ([T_ans, k], flattened). At collate time they are scattered to the guide_ answer
positions ([B, T_guide, k], the entry at t being the teacher's distribution for guide_labels[t]),
with ``guide_keep`` [B] (False: the teacher's answer leaks, leave the row out of the guidance term).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

TOPK_IDS = "teacher_topk_ids"
TOPK_LOGPROBS = "teacher_topk_logprobs"
TOPK_K = "teacher_topk_k"
# Per row: False where the teacher's answer leaks the person; such rows stay in the forget stream
# (gradient ascent) and are left out of PUBG's guidance term only.
GUIDE_KEEP = "guide_keep"


def attach_teacher_topk(batch: dict[str, torch.Tensor], rows: Sequence[dict[str, Any]]) -> None:
    """Add ``teacher_topk_ids`` / ``teacher_topk_logprobs`` [B, T_guide, k] and ``guide_keep`` [B] to a
    collated batch; a no-op when the rows carry no cached teacher or the guide view was not collated."""
    if not rows or rows[0].get(TOPK_IDS) is None or "guide_labels" not in batch:
        return
    labels = batch["guide_labels"]
    k = int(rows[0][TOPK_K])
    b, t = labels.shape
    ids = torch.zeros(b, t, k, dtype=torch.long)
    lps = torch.full((b, t, k), -1e4, dtype=torch.float32)
    for i, row in enumerate(rows):
        pos = (labels[i] != -100).nonzero(as_tuple=True)[0]
        row_ids = np.asarray(row[TOPK_IDS], dtype=np.int64).reshape(-1, k)
        row_lps = np.asarray(row[TOPK_LOGPROBS], dtype=np.float32).reshape(-1, k)
        if row_ids.shape[0] != len(pos):
            raise ValueError(
                f"row {row.get('sample_id')}: cached teacher has {row_ids.shape[0]} answer positions, "
                f"guide view has {len(pos)}; rebuild the teacher cache"
            )
        ids[i, pos] = torch.from_numpy(row_ids)
        lps[i, pos] = torch.from_numpy(row_lps)
    batch[TOPK_IDS] = ids
    batch[TOPK_LOGPROBS] = lps
    batch[GUIDE_KEEP] = torch.tensor([bool(row.get(GUIDE_KEEP, True)) for row in rows], dtype=torch.bool)
