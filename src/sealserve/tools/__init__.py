"""Owner-side tools: generated models, certificates, model conversion."""
