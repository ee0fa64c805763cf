"""Pre-processing (paper, section 2.2): fusion, centreline, reference grid, crops, way back."""
