"""Prefect blocks: one per outside system engram talks to, plus the policies operators tune.

``ALL_BLOCKS`` lists them for registration (``provision``) and for the block standard test suite.
"""

from blocks.archive import ArchiveStorage
from blocks.consolidator import LLMConsolidatorEndpoint
from blocks.policy import LifecyclePolicyBlock, RetentionPolicy
from blocks.store import EngramStore

ALL_BLOCKS = [ArchiveStorage, EngramStore, LifecyclePolicyBlock, LLMConsolidatorEndpoint, RetentionPolicy]

__all__ = [
    "ALL_BLOCKS",
    "ArchiveStorage",
    "EngramStore",
    "LLMConsolidatorEndpoint",
    "LifecyclePolicyBlock",
    "RetentionPolicy",
]
