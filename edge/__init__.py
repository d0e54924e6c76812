"""Edge agent: audio in, compact features out (streaming path; see docs/architecture.md)."""
