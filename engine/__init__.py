"""ganfit engine: GANFit-style single-photo 3D face fitting (runs as ``python -m engine``).

The engine never imports bpy; the Blender extension talks to it through argv, JSON lines on stdout
(docs/protocol.md) and a result folder (docs/result-format.md).
"""

__version__ = "0.1.0"
