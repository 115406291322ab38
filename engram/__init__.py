"""engram: layered memory for long-lived applications.

    >>> from engram import Memory
    >>> memory = Memory()  # doctest: +SKIP

Memory moves from the sensory layer through working memory and episodes into a semantic knowledge base and on to an
archive, each move a Prefect flow (see ``flows/``). This package is the domain core and imports no Prefect.
"""

from engram.errors import (
    ArchiveError,
    ArchiveMismatch,
    EngramError,
    EpisodesHeldBack,
    InvalidInput,
    LeaseLost,
    NotFound,
    QualityGateFailed,
    StoreError,
    TenantChanged,
)
from engram.layers import Layer
from engram.memory import DeletionReceipt, HistoryEntry, IngestReport, Item, Memory
from engram.portable import ExportManifest, ImportReport
from engram.search import Hit
from engram.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "ArchiveError",
    "ArchiveMismatch",
    "DeletionReceipt",
    "EngramError",
    "EpisodesHeldBack",
    "ExportManifest",
    "HistoryEntry",
    "Hit",
    "ImportReport",
    "IngestReport",
    "InvalidInput",
    "Item",
    "Layer",
    "LeaseLost",
    "Memory",
    "NotFound",
    "QualityGateFailed",
    "Settings",
    "StoreError",
    "TenantChanged",
    "__version__",
]
