"""Networks (no file I/O here): the baseline U-Net, multi-encoder fusion, Mean Imputation."""
