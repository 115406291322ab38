"""The hot store's connection, as a block."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from engram.store import Store


class EngramStore(Block):
    """Where engram keeps its hot layers: a SQLite file or a PostgreSQL database.

    The URL is a secret because a PostgreSQL URL may carry a password.

    Example:
        ```python
        from blocks.store import EngramStore
        store_block = EngramStore.load("BLOCK_NAME")
        store = store_block.get_store()
        ```
    """

    _block_type_name = "engram Store"
    _block_type_slug = "engram-store"
    _documentation_url = "https://docs.prefect.io/v3/develop/blocks"  # type: ignore[assignment]

    url: SecretStr = Field(
        ...,
        title="Store URL",
        description="SQLAlchemy URL of the hot store, e.g. sqlite:///engram.db or postgresql://user@host/db.",
    )

    def get_store(self) -> Store:
        """The ``Store`` for this URL, with the ``consolidate_attempts`` setting, migrated to the newest schema."""
        from engram.settings import Settings

        store = Store(self.url.get_secret_value(), consolidate_attempts=Settings().consolidate_attempts)
        store.migrate()
        return store
