"""Reliability tests share the flow tests' Prefect harness."""

from tests.flows.conftest import prefect_harness  # noqa: F401 - session fixture, autouse
