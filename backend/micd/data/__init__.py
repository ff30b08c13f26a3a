"""Data: image/label I/O, the dataset file and its validation report, preprocessing, the on-disk cache, patches."""
