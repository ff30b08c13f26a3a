"""Inference: choosing branches, ensembling (+ flip TTA), memory-aware sliding windows, reducing probabilities to
labels and uncertainty, and mapping the result back onto the input's exact grid.

Flow (`predictor.predict_image`): input image -> `preprocess_image` (network grid) -> `memory.plan_accumulation`
-> `sliding.segment_grid` (MONAI Gaussian-blended windows, slab by slab) -> `reduce` (argmax + entropy per slab)
-> `restore_geometry` (nearest neighbour onto the input grid).
"""
