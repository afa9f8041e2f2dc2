"""The embedded model: GGUF files shipped on PyPI, run by llama.cpp in a worker process."""

# Memory for saved copies of prompts the model has read (about 12 KB a token for the 0.5B model).
DEFAULT_KV_CACHE_MB = 256
# Disk for the same, kept across restarts.
DEFAULT_KV_DISK_MB = 1024
# The shortest run of tokens read before that a new prompt keeps, moved into place, rather than reads
# again (kv_reuse.py; llama.cpp's server's n_cache_reuse too): short runs match by chance (a line's
# indentation, a common call), and each moved run's start lost its real neighbours.
MIN_CHUNK_TOKENS = 16
