"""The fit: GANFit-style analysis-by-synthesis of one photo (see ``pipeline.py``)."""
