"""Backbones (one registry), classification heads and the pretext methods that train them."""
