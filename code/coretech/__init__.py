"""CoreTech-LLM: recipes and tools to build a patent-domain LLM with LLaMA-Factory."""

__version__ = "0.1.0"
