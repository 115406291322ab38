"""Prefect tasks: thin, batch-level wrappers around ``engram``; retries and timeouts live in the decorators."""
