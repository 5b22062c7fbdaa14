"""Importers converting other capture layouts into the gphm dataset format."""
