"""The embedded model: GGUF files shipped on PyPI, run by llama.cpp in a worker process."""
