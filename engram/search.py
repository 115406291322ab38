"""Retrieval over the hot layers: a per-tenant BM25 index, kept current incrementally.

The index tokenises with bm25s's tokenizer (English stop words, PyStemmer's English stemmer) and scores with BM25
(Lucene's idf, k1=1.5, b=0.75, as bm25s does) over an inverted index that grows by appending: adding a document
costs its own tokens, removing one flips a bit and adjusts the collection statistics, and neither rebuilds anything.
The index follows the store's per-tenant change counter (see ``engram.store``): before a search it asks the store
for what changed since the counter it last saw, which is one indexed query when nothing did.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from engram.layers import Layer
from engram.text import content_words

K1 = 1.5
B = 0.75
RRF_K = 60
_LAYER_CODE = {layer.value: i for i, layer in enumerate(Layer)}
# An internal code for the turns of consolidated episodes: searched only when the episodic layer is asked for.
_SHADOWED_EPISODIC = len(_LAYER_CODE)
# Likewise for the turns of archived episodes: searched only when the archival layer is asked for by name.
_SHADOWED_ARCHIVAL = len(_LAYER_CODE) + 1


@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes:
        text: what an application puts in a prompt: the item rendered with its date and speaker.
        layer: the layer the item lives in (``working``, ``episodic``, ``semantic``, ...).
        score: the retrieval score (higher is better; comparable within one search only).
        at: when the item happened (for a semantic item, when it was last seen).
        item_id: the id to pass to ``Memory.get`` and ``Memory.history``.
        sources: the ids of the events the item came from.
    """

    text: str
    layer: str
    score: float
    at: datetime
    item_id: str
    sources: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


def _tokenizer() -> Any:
    import Stemmer
    from bm25s.tokenization import Tokenizer

    return Tokenizer(stemmer=Stemmer.Stemmer("english"), stopwords="en")


@dataclass
class _Postings:
    docs: list[int] = field(default_factory=list)
    tfs: list[int] = field(default_factory=list)
    _frozen: tuple[np.ndarray, np.ndarray] | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._frozen is None or len(self._frozen[0]) != len(self.docs):
            self._frozen = (np.asarray(self.docs, dtype=np.int64), np.asarray(self.tfs, dtype=np.float32))
        return self._frozen


class TenantIndex:
    """The BM25 index of one tenant's hot items. Not shared across tenants, by construction."""

    def __init__(self, tenant: str):
        self.tenant = tenant
        self.seq = 0
        self.epoch: int | None = None
        # Committed archive manifests whose documents are in this index (see ``engram.archive.search_documents``).
        self.manifests: set[str] = set()
        self.manifests_seq = -1  # the tenant counter at which the committed manifests were last listed
        self._tok = _tokenizer()
        self._postings: dict[int, _Postings] = {}
        self._keys: list[tuple[str, str]] = []
        self._pos: dict[tuple[str, str], int] = {}
        self._doc_terms: list[dict[int, int]] = []
        self._docs: list[dict[str, Any]] = []
        self._seqs: list[int] = []
        self._len = np.zeros(0, dtype=np.float32)
        self._alive = np.zeros(0, dtype=bool)
        self._layer = np.zeros(0, dtype=np.int8)
        self._at = np.zeros(0, dtype=np.float64)
        self._df: dict[int, int] = {}
        self._n_alive = 0
        self._total_len = 0.0
        self._vecs: np.ndarray | None = None
        self._vec_doc = np.zeros(0, dtype=np.int64)
        self._n_vecs = 0
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return self._n_alive

    # -- maintenance -------------------------------------------------------------------------------------------

    def _grow(self, extra: int) -> None:
        need = len(self._keys) + extra
        if need <= len(self._alive):
            return
        size = max(need, int(len(self._alive) * 1.5) + 1024)
        for name, dtype in (("_len", np.float32), ("_alive", bool), ("_layer", np.int8), ("_at", np.float64)):
            old = getattr(self, name)
            new = np.zeros(size, dtype=dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def add(self, docs: Sequence[dict[str, Any]]) -> None:
        """Add documents (replacing any with the same layer and item id)."""
        if not docs:
            return
        for d in docs:
            self.remove([(d["layer"], d["item_id"])])
        token_ids = self._tok.tokenize(
            [d["text"] + " " + d.get("actor", "") for d in docs],
            update_vocab=True,
            return_as="ids",
            show_progress=False,
        )
        self._grow(len(docs))
        for d, ids in zip(docs, token_ids, strict=True):
            idx = len(self._keys)
            key = (d["layer"], d["item_id"])
            counts: dict[int, int] = {}
            for t in ids:
                counts[t] = counts.get(t, 0) + 1
            for t, c in counts.items():
                p = self._postings.get(t)
                if p is None:
                    p = self._postings[t] = _Postings()
                p.docs.append(idx)
                p.tfs.append(c)
                self._df[t] = self._df.get(t, 0) + 1
            self._keys.append(key)
            self._pos[key] = idx
            self._doc_terms.append(counts)
            self._docs.append(
                {
                    "rendered": d["rendered"],
                    "text": d["text"],
                    # For near-duplicate removal at query time, computed once here rather than per search.
                    "content_words": frozenset(content_words(d["text"])),
                    "at": d["at"],
                    "tags": tuple(d.get("tags") or ()),
                    "item_id": d["item_id"],
                }
            )
            self._seqs.append(d.get("seq", 0))
            self._len[idx] = len(ids)
            self._alive[idx] = True
            if d.get("shadowed"):
                self._layer[idx] = _SHADOWED_ARCHIVAL if d["layer"] == Layer.ARCHIVAL.value else _SHADOWED_EPISODIC
            else:
                self._layer[idx] = _LAYER_CODE[d["layer"]]
            self._at[idx] = d["at"].timestamp()
            self._n_alive += 1
            self._total_len += len(ids)
            self._set_vector(idx, d.get("vector"))

    def remove(self, keys: Iterable[tuple[str, str]], before_seq: int | None = None) -> None:
        """Drop documents; with ``before_seq``, only those written before that change."""
        for key in keys:
            idx = self._pos.get(key)
            if idx is None or not self._alive[idx]:
                continue
            if before_seq is not None and self._seqs[idx] >= before_seq:
                continue
            self._alive[idx] = False
            del self._pos[key]
            for t in self._doc_terms[idx]:
                self._df[t] -= 1
            self._doc_terms[idx] = {}
            self._n_alive -= 1
            self._total_len -= float(self._len[idx])

    def apply(self, seq: int, added: Sequence[dict[str, Any]], removed: Sequence[tuple[str, str, int]]) -> None:
        """Apply a change set from ``Store.index_changes``; removals older than a re-add are ignored."""
        self.add(added)
        for layer, item_id, at_seq in removed:
            self.remove([(layer, item_id)], before_seq=at_seq)
            if layer == Layer.SEMANTIC.value:
                # An archived fact's tombstone is a semantic row: superseding it is audited from the semantic layer,
                # and its archived document (stamped with the tombstone's seq) must go with it.
                self.remove([(Layer.ARCHIVAL.value, item_id)], before_seq=at_seq)
        self.seq = max(self.seq, seq)

    # -- dense vectors ---------------------------------------------------------------------------------------

    def _set_vector(self, idx: int, vector: np.ndarray | None) -> None:
        if vector is None:
            return
        if self._vecs is None:
            self._vecs = np.zeros((1024, len(vector)), dtype=np.float32)
            self._vec_doc = np.zeros(1024, dtype=np.int64)
        if len(vector) != self._vecs.shape[1]:
            return  # a vector from another model; the item stays lexical-only
        if self._n_vecs >= len(self._vecs):
            grown = np.zeros((int(len(self._vecs) * 1.5) + 1024, self._vecs.shape[1]), dtype=np.float32)
            grown[: self._n_vecs] = self._vecs[: self._n_vecs]
            doc = np.zeros(len(grown), dtype=np.int64)
            doc[: self._n_vecs] = self._vec_doc[: self._n_vecs]
            self._vecs, self._vec_doc = grown, doc
        self._vecs[self._n_vecs] = vector
        self._vec_doc[self._n_vecs] = idx
        self._n_vecs += 1

    @property
    def has_vectors(self) -> bool:
        return self._n_vecs > 0

    # -- query -------------------------------------------------------------------------------------------------

    def _mask(self, layers: Sequence[str] | None, since: datetime | None, until: datetime | None) -> np.ndarray:
        n_docs = len(self._keys)
        mask = self._alive[:n_docs].copy()
        if layers:
            codes = [_LAYER_CODE[x] for x in layers]
            if Layer.EPISODIC.value in layers:
                codes.append(_SHADOWED_EPISODIC)
            if Layer.ARCHIVAL.value in layers:
                codes.append(_SHADOWED_ARCHIVAL)
            mask &= np.isin(self._layer[:n_docs], codes)
        else:
            mask &= ~np.isin(self._layer[:n_docs], [_SHADOWED_EPISODIC, _SHADOWED_ARCHIVAL])
        if since is not None:
            mask &= self._at[:n_docs] >= since.timestamp()
        if until is not None:
            mask &= self._at[:n_docs] < until.timestamp()
        return mask

    def _bm25(self, query: str, mask: np.ndarray, pool: int) -> tuple[np.ndarray, np.ndarray]:
        """Doc indexes of the ``pool`` best BM25 matches within ``mask``, best first, and their scores."""
        n_docs = len(self._keys)
        q_ids = self._tok.tokenize([query], update_vocab=False, return_as="ids", show_progress=False)[0]
        q_terms = [t for t in dict.fromkeys(q_ids) if t in self._postings and self._df.get(t, 0) > 0]
        if not q_terms:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        avgdl = self._total_len / max(self._n_alive, 1)
        scores = np.zeros(n_docs, dtype=np.float32)
        lengths = self._len[:n_docs]
        for t in q_terms:
            docs, tfs = self._postings[t].arrays()
            df = self._df[t]
            idf = math.log(1.0 + (self._n_alive - df + 0.5) / (df + 0.5))
            scores[docs] += idf * tfs * (K1 + 1.0) / (tfs + K1 * (1.0 - B + B * lengths[docs] / avgdl))
        candidates = np.flatnonzero(mask & (scores > 0))
        return _top(candidates, scores[candidates], pool)

    def _dense(self, vector: np.ndarray, mask: np.ndarray, pool: int) -> tuple[np.ndarray, np.ndarray]:
        """Doc indexes of the ``pool`` nearest vectors within ``mask``, nearest first, and their cosines."""
        m = self._n_vecs
        docs = self._vec_doc[:m]
        keep = mask[docs]
        if not keep.any():
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        sims = self._vecs[:m][keep] @ vector.astype(np.float32)
        return _top(docs[keep], sims, pool)

    def search(
        self,
        query: str,
        limit: int,
        layers: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        tags: Sequence[str] | None = None,
        query_vector: np.ndarray | None = None,
    ) -> list[tuple[float, str, str, dict[str, Any]]]:
        """Top documents for ``query`` as (score, layer, item_id, doc), best first.

        With ``query_vector`` and stored vectors, BM25 and cosine rankings are fused by reciprocal rank (k=60):
        a document near the top of either list ranks high, and scores of different scales never mix.
        """
        if not self._keys or self._n_alive == 0:
            return []
        want = set(tags or ())
        pool = limit * (8 if want else 2) + 32  # over-fetch: tag filtering and near-duplicate removal follow
        mask = self._mask(layers, since, until)
        lexical, lex_scores = self._bm25(query, mask, pool)
        if query_vector is not None and self._n_vecs:
            dense, _ = self._dense(query_vector, mask, pool)
            fused: dict[int, float] = {}
            for ranking in (lexical, dense):
                for rank, idx in enumerate(ranking.tolist()):
                    fused[idx] = fused.get(idx, 0.0) + 1.0 / (RRF_K + rank + 1)
            order = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
        else:
            order = list(zip(lexical.tolist(), lex_scores.tolist(), strict=True))
        out: list[tuple[float, str, str, dict[str, Any]]] = []
        for idx, score in order:
            doc = self._docs[idx]
            if want and not want.issubset(doc["tags"]):
                continue
            layer, item_id = self._keys[idx]
            out.append((float(score), layer, item_id, doc))
        return out


def _top(idx: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (highest score) of ``idx``, best first; ties broken by index for a stable order."""
    if len(idx) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        idx, scores = idx[part], scores[part]
    order = np.lexsort((idx, -scores))
    return idx[order], scores[order]


class IndexRegistry:
    """The indexes of the tenants a process has searched, each brought up to date before use."""

    def __init__(self) -> None:
        self._indexes: dict[str, TenantIndex] = {}
        self._lock = threading.Lock()

    def get(self, tenant: str) -> TenantIndex:
        with self._lock:
            index = self._indexes.get(tenant)
            if index is None:
                index = self._indexes[tenant] = TenantIndex(tenant)
            return index

    def reset(self, tenant: str) -> TenantIndex:
        with self._lock:
            index = self._indexes[tenant] = TenantIndex(tenant)
            return index

    def drop(self, tenant: str) -> None:
        with self._lock:
            self._indexes.pop(tenant, None)
