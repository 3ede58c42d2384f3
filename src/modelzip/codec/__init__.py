"""Turning a constrained model into the bytes of a .mzip file, and back."""
