"""cordfuse: multi-sequence MS lesion segmentation in spinal cord MRI, robust to missing sequences.

Implements Walsh et al., "Multi-sequence learning for multiple sclerosis lesion segmentation in
spinal cord MRI", MICCAI 2024: pre-processing onto a common centreline-cropped grid, one encoder
per sequence fused at the bottleneck with Mean Imputation of missing sequences, and Anima-compatible
lesion-wise evaluation.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``cordfuse.segment``, imported on first use: ``import cordfuse`` stays light (no torch)."""
    if name in ("segment", "Segmentation"):
        from cordfuse import api

        return getattr(api, name)
    raise AttributeError(f"module 'cordfuse' has no attribute {name!r}")


__all__ = ["Segmentation", "__version__", "segment"]
