"""Using a trained head model: single-image fitting, expression editing, interpolation
(docs/architecture.md §3.5)."""
