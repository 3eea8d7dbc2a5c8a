"""Maintainers' helpers (documentation tables, asset fetchers). Not installed."""
