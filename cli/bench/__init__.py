"""The benchmarks behind ``dlrun bench``: models against PyTorch (``models``), matrix
products (``gemm``), several workers (``cluster``) and the dataset loader (``loader``)."""
