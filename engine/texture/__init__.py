"""The learned UV texture model: its dataset builder (dataset.py, skin.py) and trainers."""
