"""Request and response schemas, and the mapping between documents and JSON."""
