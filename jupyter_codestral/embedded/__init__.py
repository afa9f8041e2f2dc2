"""The embedded model: GGUF files shipped on PyPI, run by llama.cpp in a worker process."""

# Memory for saved copies of prompts the model has read (about 12 KB a token for the 0.5B model).
DEFAULT_KV_CACHE_MB = 256
# Disk for the same, kept across restarts.
DEFAULT_KV_DISK_MB = 1024
