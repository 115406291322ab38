"""Deployment profiles: ``serve.py`` runs every deployment in one process (the monolith)."""
