"""Built-in data-set adapters; each public module registers itself with ``DATASETS`` on import."""
