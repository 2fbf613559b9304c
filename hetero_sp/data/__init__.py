"""Data: tokenizers, corpora and the samplers that draw each step's global batch."""
