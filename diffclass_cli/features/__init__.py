"""Run an exported extractor over image sources into HDF5 feature files."""
