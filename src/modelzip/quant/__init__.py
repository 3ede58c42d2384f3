"""Quantization plumbing shared by the quantize and qat methods: calibration, conversion."""
