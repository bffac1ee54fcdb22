"""llama models from GGUF files: tokenizer, graph construction with a KV cache, perplexity, sampling, CLI."""
from .model import LlamaHParams, LlamaModel, LlamaSession
from .tokenizer import SPMTokenizer

__all__ = ["LlamaHParams", "LlamaModel", "LlamaSession", "SPMTokenizer"]
