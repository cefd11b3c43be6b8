"""Measurement tools: layer accounting, receptive fields, equivariance, gradient flow, gradcheck."""
