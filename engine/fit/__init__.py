"""The fit: GANFit-style analysis-by-synthesis of one photo (see ``fitter.py``)."""
