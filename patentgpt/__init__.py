"""PatentGPT: an open framework for training large language models for intellectual property."""

__version__ = "0.1.0"
