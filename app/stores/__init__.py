"""Database access, one module per collection. Stores know Mongo, not HTTP."""
