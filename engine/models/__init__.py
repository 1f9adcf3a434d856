"""Models of the engine: the 3D morphable face model and the texture models."""
