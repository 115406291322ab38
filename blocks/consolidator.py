"""An OpenAI-compatible chat endpoint for the LLM consolidator, as a block."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class LLMConsolidatorEndpoint(Block):
    """The chat-completions endpoint an ``LLMConsolidator`` sends episodes to (OpenAI, vLLM, Ollama, ...).

    Example:
        ```python
        from blocks.consolidator import LLMConsolidatorEndpoint
        endpoint = LLMConsolidatorEndpoint.load("BLOCK_NAME")
        consolidator = endpoint.get_consolidator()
        ```
    """

    _block_type_name = "engram LLM Consolidator Endpoint"
    _block_type_slug = "engram-llm-consolidator-endpoint"
    _documentation_url = "https://docs.prefect.io/v3/develop/blocks"  # type: ignore[assignment]

    base_url: str = Field(
        ..., title="Base URL", description="Base URL of the OpenAI-compatible API, e.g. http://localhost:8000/v1."
    )
    model: str = Field(..., title="Model", description="The model name the endpoint serves.")
    api_key: SecretStr | None = Field(
        default=None, title="API key", description="Bearer token, if the endpoint needs one."
    )
    timeout_seconds: float = Field(default=60.0, gt=0, title="Timeout", description="Per-request timeout in seconds.")

    def get_consolidator(self):  # noqa: ANN201 - engram.consolidate_llm.LLMConsolidator
        from engram.consolidate_llm import LLMConsolidator

        return LLMConsolidator(
            base_url=self.base_url,
            model=self.model,
            api_key=self.api_key.get_secret_value() if self.api_key else None,
            timeout=self.timeout_seconds,
        )
