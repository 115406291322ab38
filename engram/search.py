"""Retrieval over the hot layers: a per-tenant BM25 index, kept current incrementally.

The index tokenises with bm25s's tokenizer (English stop words, PyStemmer's English stemmer) and scores with BM25
(Lucene's idf, k1=1.5, b=0.75, as bm25s does) over an inverted index that grows by appending: adding a document
costs its own tokens, removing one flips a bit and adjusts the collection statistics, and neither rebuilds anything.
The index follows the store's per-tenant change counter (see ``engram.store``): before a search it asks the store
for what changed since the counter it last saw, which is one indexed query when nothing did.

Archived documents are not added one by one: each committed manifest becomes an ``ArchiveSegment``, flat numpy and
Arrow arrays built from the index terms its files carry, merged into one segment before a search. Scores use the
collection statistics of the hot and archived documents together, so a document ranks the same in either form.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
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


_STEMMER_LOCK = threading.Lock()
_STEMMER: Any = None
# The stem of each of the shared tokenizer's stem ids, grown as its vocabulary grows: asking bm25s for strings would
# rebuild the reverse of its whole vocabulary on every call, a cost that grows with everything ever tokenised.
_STEMS: dict[int, str] = {}


def search_terms(texts: Sequence[str]) -> list[list[str]]:
    """The index terms of each text (lower-cased words, English stop words dropped, stemmed) as ``TenantIndex``
    tokenises them, as strings: what an archived file keeps so that loading it for search tokenises nothing."""
    global _STEMMER
    with _STEMMER_LOCK:
        if _STEMMER is None or len(_STEMMER.word_to_id) > 2_000_000:
            # The word cache only speeds things up; keep it bounded.
            _STEMMER = _tokenizer()
            _STEMS.clear()
        ids = _STEMMER.tokenize(list(texts), update_vocab=True, return_as="ids", show_progress=False)
        vocabulary = _STEMMER.stem_to_sid
        if len(vocabulary) > len(_STEMS):
            # New stems are appended to the vocabulary: only those past the ones already known are read.
            _STEMS.update((sid, stem) for stem, sid in itertools.islice(vocabulary.items(), len(_STEMS), None))
        return [[_STEMS[i] for i in row] for row in ids]


@dataclass
class _Postings:
    docs: list[int] = field(default_factory=list)
    tfs: list[int] = field(default_factory=list)
    _frozen: tuple[np.ndarray, np.ndarray] | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._frozen is None or len(self._frozen[0]) != len(self.docs):
            self._frozen = (np.asarray(self.docs, dtype=np.int64), np.asarray(self.tfs, dtype=np.float32))
        return self._frozen


class RowContents:
    """The stored columns of a segment's rows (text, rendering, actor, tags as JSON text), in parts that are each
    read the first time one of their rows is asked for: a search reads the texts of its hits' files only.

    Args:
        parts: (rows, read) in row order; ``read()`` returns the part's four columns (indexable, Arrow or lists).
    """

    def __init__(self, parts: Sequence[tuple[int, Callable[[], Sequence[Any]]]]):
        self._counts = [rows for rows, _ in parts]
        self._reads = [read for _, read in parts]
        self._starts = np.cumsum([0, *self._counts])[:-1].tolist()
        self._loaded: dict[int, Sequence[Any]] = {}

    def __len__(self) -> int:
        return sum(self._counts)

    @classmethod
    def concat(cls, contents: Sequence[RowContents]) -> RowContents:
        """The rows of ``contents`` one after another; what was read stays read."""
        out = cls([(n, read) for c in contents for n, read in zip(c._counts, c._reads, strict=True)])
        k = 0
        for c in contents:
            for j in range(len(c._reads)):
                if j in c._loaded:
                    out._loaded[k + j] = c._loaded[j]
            k += len(c._reads)
        return out

    def row(self, row: int) -> tuple[Any, Any, Any, Any]:
        """The text, rendering, actor and tags of one row."""
        k = bisect.bisect_right(self._starts, row) - 1
        columns = self._loaded.get(k)
        if columns is None:
            columns = self._loaded[k] = self._reads[k]()
        i = row - self._starts[k]
        text, rendered, actor, tags = (_value(column, i) for column in columns)
        return text, rendered, actor, tags


class ArchiveSegment:
    """The search documents of one archive manifest, held column-wise: what ``TenantIndex`` searches beside its hot
    documents without turning each archived row into Python objects.

    Loading one costs no tokenising and no per-row Python: the terms come from the files (see
    ``engram.archive.search_documents``), and the postings of a term are gathered from the flat token arrays the
    first time a query asks for it. A hit's document is built when it is returned.

    Args:
        manifest_id: the manifest whose rows these are.
        item_ids: one entry per row.
        contents: each row's text, rendering, actor and tags (JSON text), read when the row is a hit.
        at: when each item happened, as POSIX seconds.
        seq: each row's change stamp: a fact's is its tombstone's, a turn's 0 (a turn's tombstone does not change
            after the archive); a later removal drops only rows stamped before it.
        shadowed: whether each row is an archived episode's turn (searched only when the archival layer is named).
        alive: which rows are searchable (still archived, current).
        token_offsets: ``len(rows) + 1`` offsets into ``token_terms``: row ``i``'s terms are
            ``terms[token_terms[token_offsets[i]:token_offsets[i + 1]]]``.
        token_terms: term numbers into ``terms``.
        terms: the distinct terms (stems).
        vectors: ``(rows with an embedding, dim)`` float32 and the row of each, or None.
    """

    def __init__(
        self,
        manifest_id: str,
        item_ids: Sequence[str],
        contents: RowContents,
        at: np.ndarray,
        seq: np.ndarray,
        shadowed: np.ndarray,
        alive: np.ndarray,
        token_offsets: np.ndarray,
        token_terms: np.ndarray,
        terms: Sequence[str],
        vectors: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        self.manifest_id = manifest_id
        self._item_ids = item_ids
        self._contents = contents
        self.at = np.asarray(at, dtype=np.float64)
        self.seq = np.asarray(seq, dtype=np.int64)
        self.layer = np.where(shadowed, _SHADOWED_ARCHIVAL, _LAYER_CODE[Layer.ARCHIVAL.value]).astype(np.int8)
        self.alive = np.asarray(alive, dtype=bool).copy()
        offsets = np.asarray(token_offsets, dtype=np.int64)
        self.length = np.diff(offsets).astype(np.float32)
        self._token_terms = np.asarray(token_terms, dtype=np.int32)
        self._token_rows = np.repeat(np.arange(len(self.length), dtype=np.int32), np.diff(offsets))
        self._terms = terms
        self._term_no: dict[str, int] | None = None  # built by the first query: a merged-away segment never needs it
        self._postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._row_of: dict[str, int] | None = None
        self._docs: dict[int, dict[str, Any]] = {}
        self.vectors = vectors
        self.n_alive = int(self.alive.sum())
        self.total_len = float(self.length[self.alive].sum())

    def __len__(self) -> int:
        return self.n_alive

    @classmethod
    def merge(cls, segments: Sequence[ArchiveSegment]) -> ArchiveSegment:
        """One segment holding the rows of ``segments`` as they stand (removed rows stay removed): a search then
        costs one pass over arrays however many manifests a tenant's archive has."""
        import pyarrow as pa

        def strings(name: str) -> Any:
            # Chunked, not copied: a row's value is read only when it is a hit.
            return pa.chunked_array([c for seg in segments for c in _chunks(getattr(seg, name))], pa.string())

        tokens = pa.chunked_array(
            [
                pa.DictionaryArray.from_arrays(pa.array(seg._token_terms, pa.int32()), _arrow(seg._terms))
                for seg in segments
            ],
            type=pa.dictionary(pa.int32(), pa.string()),
        ).unify_dictionaries()
        terms = tokens.chunk(0).dictionary if tokens.num_chunks else pa.array([], pa.string())
        token_terms = np.concatenate(
            [np.zeros(0, dtype=np.int32)] + [c.indices.to_numpy(zero_copy_only=False) for c in tokens.chunks]
        )
        lengths = np.concatenate([seg.length for seg in segments]).astype(np.int64)
        vectors = None
        with_vectors = [(k, seg.vectors) for k, seg in enumerate(segments) if seg.vectors is not None]
        if with_vectors:
            dim = with_vectors[0][1][0].shape[1]
            starts = np.cumsum([0] + [len(seg.length) for seg in segments])
            kept = [(starts[k], v) for k, v in with_vectors if v[0].shape[1] == dim]
            vectors = (np.concatenate([v[0] for _, v in kept]), np.concatenate([start + v[1] for start, v in kept]))
        return cls(
            ",".join(seg.manifest_id for seg in segments),
            item_ids=strings("_item_ids"),
            contents=RowContents.concat([seg._contents for seg in segments]),
            at=np.concatenate([seg.at for seg in segments]),
            seq=np.concatenate([seg.seq for seg in segments]),
            shadowed=np.concatenate([seg.layer == _SHADOWED_ARCHIVAL for seg in segments]),
            alive=np.concatenate([seg.alive for seg in segments]),
            token_offsets=np.concatenate([[0], np.cumsum(lengths)]),
            token_terms=token_terms,
            terms=terms,
            vectors=vectors,
        )

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """The rows holding ``term`` (ascending) and its count in each; dead rows included, as in the hot index."""
        found = self._postings.get(term)
        if found is None:
            if self._term_no is None:
                terms = self._terms.to_pylist() if hasattr(self._terms, "to_pylist") else self._terms
                self._term_no = {t: i for i, t in enumerate(terms)}
            no = self._term_no.get(term)
            if no is None:
                found = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
            else:
                rows = self._token_rows[self._token_terms == no]  # ascending: tokens are stored row by row
                docs, tfs = np.unique(rows, return_counts=True)
                found = (docs.astype(np.int64), tfs.astype(np.float32))
            self._postings[term] = found
        return found

    def df(self, term: str) -> int:
        docs, _ = self.postings(term)
        return int(self.alive[docs].sum())

    def mask(self, codes: Sequence[int] | None, since: float | None, until: float | None) -> np.ndarray:
        mask = self.alive.copy()
        if codes is not None:
            mask &= np.isin(self.layer, codes)
        if since is not None:
            mask &= self.at >= since
        if until is not None:
            mask &= self.at < until
        return mask

    def _row(self, item_id: str) -> int | None:
        if self._row_of is None:
            ids = self._item_ids.to_pylist() if hasattr(self._item_ids, "to_pylist") else list(self._item_ids)
            self._row_of = {x: i for i, x in enumerate(ids)}
        return self._row_of.get(item_id)

    def restamp(self, item_id: str, at: float, seq: int) -> bool:
        """Give a row the time and change stamp its tombstone has now (a restated fact merged into an archived
        one moves its last-seen time); returns whether the segment holds the row alive."""
        row = self._row(item_id)
        if row is None or not self.alive[row]:
            return False
        self.at[row], self.seq[row] = at, seq
        self._docs.pop(row, None)
        return True

    def remove(self, item_id: str, before_seq: int | None) -> bool:
        """Drop a row by item id (only if stamped before ``before_seq``, when given); returns whether it did."""
        row = self._row(item_id)
        if row is None or not self.alive[row]:
            return False
        if before_seq is not None and self.seq[row] >= before_seq:
            return False
        self.alive[row] = False
        self.n_alive -= 1
        self.total_len -= float(self.length[row])
        return True

    def documents(self) -> list[dict[str, Any]]:
        """The searchable rows as the documents ``TenantIndex.add`` takes one by one (which cost far more to hold)."""
        return [
            {
                "layer": Layer.ARCHIVAL.value,
                "item_id": doc["item_id"],
                "text": doc["text"],
                "actor": self._contents.row(row)[2] or "",
                "at": doc["at"],
                "tags": list(doc["tags"]),
                "rendered": doc["rendered"],
                "shadowed": bool(self.layer[row] == _SHADOWED_ARCHIVAL),
                "seq": int(self.seq[row]),
            }
            for row in np.flatnonzero(self.alive).tolist()
            for doc in (self.doc(row),)
        ]

    def key(self, row: int) -> tuple[str, str]:
        return Layer.ARCHIVAL.value, _value(self._item_ids, row)

    def doc(self, row: int) -> dict[str, Any]:
        """The document of a row, as ``TenantIndex`` keeps its hot ones."""
        doc = self._docs.get(row)
        if doc is None:
            import json

            from engram.text import render

            text, rendered, actor, tags = self._contents.row(row)
            text, actor = text or "", actor or ""
            at = datetime.fromtimestamp(float(self.at[row]), tz=UTC)
            doc = self._docs[row] = {
                "rendered": rendered or render(text, actor, at),
                "text": text,
                "content_words": frozenset(content_words(text)),
                "at": at,
                "tags": tuple(json.loads(tags) or ()) if tags else (),
                "item_id": _value(self._item_ids, row),
            }
        return doc


def _arrow(column: Any) -> Any:
    """A sequence of strings as an Arrow array."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks()
    return column if isinstance(column, pa.Array) else pa.array(list(column), pa.string())


def _chunks(column: Any) -> list[Any]:
    """A sequence of strings as a list of Arrow arrays."""
    import pyarrow as pa

    return list(column.chunks) if isinstance(column, pa.ChunkedArray) else [_arrow(column)]


def _value(column: Any, row: int) -> Any:
    """One value of a Python sequence or an Arrow array."""
    value = column[row]
    return value.as_py() if hasattr(value, "as_py") else value


class TenantIndex:
    """The BM25 index of one tenant's hot items. Not shared across tenants, by construction."""

    def __init__(self, tenant: str):
        self.tenant = tenant
        self.seq = 0
        self.epoch: int | None = None
        # Committed archive manifests whose documents are in this index (see ``engram.archive.search_documents``).
        self.manifests: set[str] = set()
        self.manifests_seq = -1  # the tenant counter at which the committed manifests were last listed
        self.archive_incomplete = False  # a committed manifest could not be read when they were last listed
        self.archive_retry_at = 0.0  # time.monotonic() after which a search tries such a manifest again
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
        # Archived documents, one segment per manifest, searched beside the hot ones (see ``ArchiveSegment``).
        self._segments: list[ArchiveSegment] = []
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return self._n_alive + sum(seg.n_alive for seg in self._segments)

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

    def add(self, docs: Sequence[dict[str, Any]] | ArchiveSegment) -> None:
        """Add documents (replacing any with the same layer and item id), or an archive manifest's segment."""
        if isinstance(docs, ArchiveSegment):
            self._segments.append(docs)
            return
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
            if idx is None and key[0] == Layer.ARCHIVAL.value:
                for seg in self._segments:
                    seg.remove(key[1], before_seq)
                continue
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

    def apply(
        self,
        seq: int,
        added: Sequence[dict[str, Any]],
        removed: Sequence[tuple[str, str, int]],
        restamped: Sequence[tuple[str, datetime, int]] = (),
    ) -> None:
        """Apply a change set from ``Store.index_changes``; removals older than a re-add are ignored; archived
        facts ``restamped`` (item id, last seen, seq) get their new time."""
        self.add(added)
        # Most removals name nothing the index holds (an item archived before the index read it): those are
        # skipped without a call.
        semantic, archival = Layer.SEMANTIC.value, Layer.ARCHIVAL.value
        pos, segments = self._pos, self._segments
        for layer, item_id, at_seq in removed:
            # An archived document loaded as part of a segment is not in ``pos``: a departure from the archival
            # layer (a rehydrate) must still reach it.
            if (layer, item_id) in pos or (layer == archival and segments):
                self.remove([(layer, item_id)], before_seq=at_seq)
            if layer == semantic and (segments or (archival, item_id) in pos):
                # An archived fact's tombstone is a semantic row: superseding it is audited from the semantic layer,
                # and its archived document (stamped with the tombstone's seq) must go with it.
                self.remove([(archival, item_id)], before_seq=at_seq)
        # After the removals: a row that left before it was archived again and restated must go by its old stamp.
        for item_id, at, at_seq in restamped:
            for segment in self._segments:
                if segment.restamp(item_id, at.timestamp(), at_seq):
                    break
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
    def has_archive(self) -> bool:
        """Whether archived documents are loaded (as segments)."""
        return bool(self._segments)

    @property
    def has_vectors(self) -> bool:
        return self._n_vecs > 0 or any(seg.vectors is not None for seg in self._segments)

    # -- query -------------------------------------------------------------------------------------------------

    @staticmethod
    def _codes(layers: Sequence[str] | None) -> list[int]:
        """The layer codes a search covers."""
        if not layers:
            return [
                code for code in range(_SHADOWED_ARCHIVAL + 1) if code not in (_SHADOWED_EPISODIC, _SHADOWED_ARCHIVAL)
            ]
        codes = [_LAYER_CODE[x] for x in layers]
        if Layer.EPISODIC.value in layers:
            codes.append(_SHADOWED_EPISODIC)
        if Layer.ARCHIVAL.value in layers:
            codes.append(_SHADOWED_ARCHIVAL)
        return codes

    def _mask(self, codes: Sequence[int], since: float | None, until: float | None) -> np.ndarray:
        n_docs = len(self._keys)
        mask = self._alive[:n_docs] & np.isin(self._layer[:n_docs], codes)
        if since is not None:
            mask &= self._at[:n_docs] >= since
        if until is not None:
            mask &= self._at[:n_docs] < until
        return mask

    def _bm25(self, query: str, masks: Sequence[np.ndarray], pool: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Document ids (see ``_doc_id``) of the ``pool`` best BM25 matches within ``masks`` (the hot documents',
        then each segment's), best first, their scores, and how many documents matched in all. The collection
        statistics (document count, average length, document frequencies) are those of the hot and archived
        documents together."""
        terms = list(dict.fromkeys(search_terms([query])[0]))
        n_alive = self._n_alive + sum(seg.n_alive for seg in self._segments)
        if not terms or n_alive == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), 0
        avgdl = (self._total_len + sum(seg.total_len for seg in self._segments)) / max(n_alive, 1)
        hot_scores = np.zeros(len(self._keys), dtype=np.float32)
        seg_scores = [np.zeros(len(seg.length), dtype=np.float32) for seg in self._segments]
        hot_lengths = self._len[: len(self._keys)]
        for term in terms:
            t = self._tok.stem_to_sid.get(term)
            hot = self._postings.get(t) if t is not None and self._df.get(t, 0) > 0 else None
            df = self._df[t] if hot is not None else 0
            df += sum(seg.df(term) for seg in self._segments)
            if df == 0:
                continue
            idf = math.log(1.0 + (n_alive - df + 0.5) / (df + 0.5))
            if hot is not None:
                docs, tfs = hot.arrays()
                hot_scores[docs] += idf * tfs * (K1 + 1.0) / (tfs + K1 * (1.0 - B + B * hot_lengths[docs] / avgdl))
            for seg, scores in zip(self._segments, seg_scores, strict=True):
                docs, tfs = seg.postings(term)
                if len(docs):
                    scores[docs] += idf * tfs * (K1 + 1.0) / (tfs + K1 * (1.0 - B + B * seg.length[docs] / avgdl))
        ids = [np.flatnonzero(masks[0] & (hot_scores > 0))]
        values = [hot_scores[ids[0]]]
        for k, scores in enumerate(seg_scores, start=1):
            rows = np.flatnonzero(masks[k] & (scores > 0))
            ids.append(_doc_id(k, rows))
            values.append(scores[rows])
        return (*_top(np.concatenate(ids), np.concatenate(values), pool), sum(len(i) for i in ids))

    def _dense(self, vector: np.ndarray, masks: Sequence[np.ndarray], pool: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Document ids of the ``pool`` nearest vectors within ``masks``, nearest first, their cosines, and how many
        documents with a vector the masks let through."""
        query = vector.astype(np.float32)
        ids: list[np.ndarray] = []
        sims: list[np.ndarray] = []
        m = self._n_vecs
        if m:
            docs = self._vec_doc[:m]
            keep = masks[0][docs]
            ids.append(docs[keep])
            sims.append(self._vecs[:m][keep] @ query)
        for k, seg in enumerate(self._segments, start=1):
            if seg.vectors is None or seg.vectors[0].shape[1] != len(query):
                continue
            vecs, rows = seg.vectors
            keep = masks[k][rows]
            ids.append(_doc_id(k, rows[keep]))
            sims.append(vecs[keep] @ query)
        if not ids or not sum(len(i) for i in ids):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), 0
        return (*_top(np.concatenate(ids), np.concatenate(sims), pool), sum(len(i) for i in ids))

    def _entry(self, doc_id: int) -> tuple[str, str, dict[str, Any]]:
        """(layer, item_id, document) of a document id."""
        k, row = doc_id >> _SEGMENT_SHIFT, doc_id & _ROW_MASK
        if k == 0:
            layer, item_id = self._keys[row]
            return layer, item_id, self._docs[row]
        seg = self._segments[k - 1]
        layer, item_id = seg.key(row)
        return layer, item_id, seg.doc(row)

    def search(self, *args: Any, **kwargs: Any) -> list[tuple[float, str, str, dict[str, Any]]]:
        """The documents of ``candidates`` (same arguments), without whether the pool was cut."""
        return self.candidates(*args, **kwargs)[0]

    @staticmethod
    def default_pool(limit: int, tags: Sequence[str] | None) -> int:
        """How many of each ranking's best matches a search looks at first: over-fetched, since tag filtering and
        near-duplicate removal follow."""
        return limit * (8 if tags else 2) + 32

    def candidates(
        self,
        query: str,
        limit: int,
        layers: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        tags: Sequence[str] | None = None,
        query_vector: np.ndarray | None = None,
        pool: int | None = None,
    ) -> tuple[list[tuple[float, str, str, dict[str, Any]]], bool]:
        """Top documents for ``query`` as (score, layer, item_id, doc), best first, equal scores by item id, ranked
        from the ``pool`` best of each ranking (by default a few times ``limit``); and whether a ranking had more
        matching documents than that: then documents past the pool were not looked at, and a caller that filtered
        too many of these out asks again with a larger pool.

        With ``query_vector`` and stored vectors, BM25 and cosine rankings are fused by reciprocal rank (k=60):
        a document near the top of either list ranks high, and scores of different scales never mix.
        """
        if len(self) == 0:
            return [], False
        if len(self._segments) > 1:
            self._segments = [ArchiveSegment.merge(self._segments)]
        want = set(tags or ())
        if pool is None:
            pool = self.default_pool(limit, tags)
        codes = self._codes(layers)
        lo = since.timestamp() if since is not None else None
        hi = until.timestamp() if until is not None else None
        masks = [self._mask(codes, lo, hi), *(seg.mask(codes, lo, hi) for seg in self._segments)]
        lexical, lex_scores, matched = self._bm25(query, masks, pool)
        cut = matched > len(lexical)
        if query_vector is not None and self.has_vectors:
            dense, dense_scores, near = self._dense(query_vector, masks, pool)
            cut = cut or near > len(dense)
            fused: dict[int, float] = {}
            for ranking, scores in ((lexical, lex_scores), (dense, dense_scores)):
                for rank, idx in zip(_shared_ranks(scores), ranking.tolist(), strict=True):
                    fused[idx] = fused.get(idx, 0.0) + 1.0 / (RRF_K + rank + 1)
            order = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
        else:
            order = list(zip(lexical.tolist(), lex_scores.tolist(), strict=True))
        out: list[tuple[float, str, str, dict[str, Any]]] = []
        for idx, score in order:
            layer, item_id, doc = self._entry(idx)
            if want and not want.issubset(doc["tags"]):
                continue
            out.append((float(score), layer, item_id, doc))
        # Equal scores in item id order: the order documents were loaded in (which compaction or a reload changes)
        # must not decide which of two equally good hits comes first, nor which near-duplicate is kept (``_top``
        # keeps the documents tied at its cut for this).
        out.sort(key=lambda hit: (-hit[0], hit[2]))
        return out, cut


def _shared_ranks(scores: np.ndarray) -> list[int]:
    """Rank positions of scores sorted best first, equal scores sharing the rank of the first of them (1, 2, 2, 4)
    from 0: which of two equally scored documents was loaded first must not change their fused score."""
    ranks: list[int] = []
    previous = None
    for position, score in enumerate(scores.tolist()):
        ranks.append(ranks[-1] if score == previous else position)
        previous = score
    return ranks


# A document id: the hot document's index, or the segment's number (from 1) shifted above its row.
_SEGMENT_SHIFT = 40
_ROW_MASK = (1 << _SEGMENT_SHIFT) - 1


def _doc_id(segment: int, rows: np.ndarray) -> np.ndarray:
    return (np.int64(segment) << _SEGMENT_SHIFT) | rows.astype(np.int64)


# How many times ``k`` documents tied at the cut ``_top`` keeps before it cuts among them by load order.
_TIES_KEPT = 8


def _top(idx: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (highest score) of ``idx``, best first (equal scores by index), and every other document tied
    with the ``k``-th, up to ``_TIES_KEPT * k`` in all: the caller orders equal scores by item id, so the cut must not
    choose among them by the order the documents were loaded in."""
    if len(idx) > k:
        part = np.argpartition(-scores, k - 1)
        kth = scores[part[k - 1]]
        # A NaN (a broken stored vector) compares false: then the k first as partitioned, as before.
        kept = part[:k] if np.isnan(kth) else np.flatnonzero(scores >= kth)
        if len(kept) > _TIES_KEPT * k:
            kept = np.argpartition(-scores, _TIES_KEPT * k - 1)[: _TIES_KEPT * k]
        idx, scores = idx[kept], scores[kept]
    order = np.lexsort((idx, -scores))
    return idx[order], scores[order]


class IndexRegistry:
    """The indexes of the tenants a process has searched, each brought up to date before use.

    At most ``max_tenants`` are kept, the least recently searched dropped first: a process that serves many tenants
    holds the busy ones, and a tenant dropped is read again from the store (and its archive) on its next search.
    """

    def __init__(self, max_tenants: int = 64) -> None:
        if max_tenants < 1:
            raise ValueError(f"max_tenants must be at least 1, got {max_tenants!r}")
        self.max_tenants = max_tenants
        self._indexes: OrderedDict[str, TenantIndex] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._indexes)

    def get(self, tenant: str) -> TenantIndex:
        with self._lock:
            index = self._indexes.get(tenant)
            if index is None:
                index = self._indexes[tenant] = TenantIndex(tenant)
            self._indexes.move_to_end(tenant)
            self._evict()
            return index

    def reset(self, tenant: str, stale: TenantIndex) -> TenantIndex:
        """A new, empty index for the tenant in place of ``stale``; the one already there if another search
        replaced ``stale`` first (it may be filled by now)."""
        with self._lock:
            index = self._indexes.get(tenant)
            if index is None or index is stale:
                index = self._indexes[tenant] = TenantIndex(tenant)
            self._indexes.move_to_end(tenant)
            self._evict()
            return index

    def _evict(self) -> None:
        # A search still holding an evicted index finishes with it; only the registry forgets it.
        while len(self._indexes) > self.max_tenants:
            self._indexes.popitem(last=False)

    def drop(self, tenant: str) -> None:
        with self._lock:
            self._indexes.pop(tenant, None)
