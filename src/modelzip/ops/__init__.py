"""Pure tensor math: no module walking, I/O or logging here."""
