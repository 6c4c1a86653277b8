"""sealserve: confidential TensorFlow Serving for encrypted SavedModels."""

__version__ = "0.1.0"
