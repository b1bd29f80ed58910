"""terrain_ssl: online self-supervised terrain-roughness learning for off-road ground robots."""
__version__ = "0.1.0"
