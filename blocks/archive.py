"""Object storage for the archival layer, as a block: S3, MinIO, or a local folder."""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class ArchiveStorage(Block):
    """Where the archival layer lives: an S3-compatible bucket (MinIO, AWS S3) or a local folder.

    Hands out an fsspec filesystem for reading and writing Parquet, and a MinIO client for bucket administration
    (creating the bucket, turning on versioning).

    Example:
        ```python
        from blocks.archive import ArchiveStorage
        storage = ArchiveStorage.load("BLOCK_NAME")
        fs = storage.filesystem()
        ```
    """

    _block_type_name = "engram Archive Storage"
    _block_type_slug = "engram-archive-storage"
    _documentation_url = "https://docs.prefect.io/v3/develop/blocks"  # type: ignore[assignment]

    url: str = Field(
        default="file:///var/lib/engram/archive",
        title="Archive URL",
        description="file:///folder for a local archive, or s3://bucket/prefix for object storage.",
    )
    endpoint: str | None = Field(
        default=None,
        title="Endpoint",
        description="S3 endpoint URL for MinIO or another S3-compatible server, e.g. http://minio:9000.",
    )
    region: str | None = Field(
        default=None, title="Region", description="The bucket's region, if the server needs one."
    )
    access_key: SecretStr | None = Field(default=None, title="Access key", description="S3 access key id.")
    secret_key: SecretStr | None = Field(default=None, title="Secret key", description="S3 secret access key.")

    @property
    def is_s3(self) -> bool:
        return self.location().is_s3

    @property
    def bucket(self) -> str | None:
        """The bucket of an ``s3://`` URL."""
        return self.location().bucket

    @property
    def prefix(self) -> str:
        """The key prefix (or folder) under which engram writes."""
        return self.location().prefix

    def location(self) -> Any:
        """The plain ``engram.archive.ArchiveLocation`` the domain code uses (no Prefect inside engram)."""
        from engram.archive import ArchiveLocation

        return ArchiveLocation(
            self.url.rstrip("/"),
            endpoint=self.endpoint,
            region=self.region,
            access_key=self.access_key,
            secret_key=self.secret_key,
        )

    def storage_options(self) -> dict[str, Any]:
        """Options for s3fs (empty for a local folder)."""
        return self.location().storage_options()

    def filesystem(self) -> Any:
        """An fsspec filesystem: s3fs for ``s3://``, the local filesystem for ``file://``."""
        return self.location().filesystem()

    def minio_client(self) -> Any:
        """A MinIO client for bucket administration (S3 archives only)."""
        return self.location().minio_client()
