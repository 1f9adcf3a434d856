"""Photo and file input/output (torch-free)."""
