"""Cross-modal search over the indexed collection: a CLI (``aladin-search``) and an HTTP service."""
