"""Measurement tools: receptive fields, layer counting, equivariance, gradient flow."""
