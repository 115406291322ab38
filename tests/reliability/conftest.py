"""Reliability tests share the flow tests' Prefect harness and the session's S3 server on loopback."""

from tests.flows.conftest import prefect_harness  # noqa: F401 - session fixture, autouse
