"""Using a trained head model: single-image fitting, expression editing, interpolation
(DESIGN.md §2)."""
