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

K1 = 1.5
B = 0.75
_LAYER_CODE = {layer.value: i for i, layer in enumerate(Layer)}


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
                    "at": d["at"],
                    "tags": tuple(d.get("tags") or ()),
                    "item_id": d["item_id"],
                }
            )
            self._seqs.append(d.get("seq", 0))
            self._len[idx] = len(ids)
            self._alive[idx] = True
            self._layer[idx] = _LAYER_CODE[d["layer"]]
            self._at[idx] = d["at"].timestamp()
            self._n_alive += 1
            self._total_len += len(ids)

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
        self.seq = max(self.seq, seq)

    # -- query -------------------------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        limit: int,
        layers: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        tags: Sequence[str] | None = None,
    ) -> list[tuple[float, str, str, dict[str, Any]]]:
        """Top documents for ``query`` as (score, layer, item_id, doc), best first."""
        n_docs = len(self._keys)
        if n_docs == 0 or self._n_alive == 0:
            return []
        q_ids = self._tok.tokenize([query], update_vocab=False, return_as="ids", show_progress=False)[0]
        q_terms = [t for t in dict.fromkeys(q_ids) if t in self._postings and self._df.get(t, 0) > 0]
        if not q_terms:
            return []
        avgdl = self._total_len / max(self._n_alive, 1)
        scores = np.zeros(n_docs, dtype=np.float32)
        lengths = self._len[:n_docs]
        for t in q_terms:
            docs, tfs = self._postings[t].arrays()
            df = self._df[t]
            idf = math.log(1.0 + (self._n_alive - df + 0.5) / (df + 0.5))
            denom = tfs + K1 * (1.0 - B + B * lengths[docs] / avgdl)
            scores[docs] += idf * tfs * (K1 + 1.0) / denom
        mask = self._alive[:n_docs] & (scores > 0)
        if layers:
            codes = [_LAYER_CODE[x] for x in layers]
            mask &= np.isin(self._layer[:n_docs], codes)
        if since is not None:
            mask &= self._at[:n_docs] >= since.timestamp()
        if until is not None:
            mask &= self._at[:n_docs] < until.timestamp()
        candidates = np.flatnonzero(mask)
        if len(candidates) == 0:
            return []
        want = set(tags or ())
        # Tags are rare filters: over-fetch, then filter in rank order.
        take = min(len(candidates), limit * (8 if want else 1) + 32)
        cand_scores = scores[candidates]
        top = candidates[np.argpartition(-cand_scores, take - 1)[:take]] if take < len(candidates) else candidates
        top = top[np.lexsort((top, -scores[top]))]
        out: list[tuple[float, str, str, dict[str, Any]]] = []
        for idx in top:
            doc = self._docs[idx]
            if want and not want.issubset(doc["tags"]):
                continue
            layer, item_id = self._keys[idx]
            out.append((float(scores[idx]), layer, item_id, doc))
            if len(out) >= limit:
                break
        if want and len(out) < limit and take < len(candidates):
            # Not enough tagged hits in the over-fetched head: scan the rest in order.
            rest = candidates[np.argsort(-scores[candidates], kind="stable")]
            seen = {o[2] for o in out}
            for idx in rest:
                doc = self._docs[idx]
                if doc["item_id"] in seen or not want.issubset(doc["tags"]):
                    continue
                layer, item_id = self._keys[idx]
                out.append((float(scores[idx]), layer, item_id, doc))
                if len(out) >= limit:
                    break
        return out


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
