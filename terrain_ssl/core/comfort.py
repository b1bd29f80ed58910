"""Named vibration limits (m/s^2) for `terrain-ssl calibrate --comfort` (no imports: the CLI
lists them before anything heavy loads)."""

# ISO 2631-1:1997 Annex C, likely reactions to weighted RMS acceleration (m/s^2) in public
# transport; each name's limit is the upper end of its range ("extremely uncomfortable", above
# 2 m/s^2, has none).
ISO2631_COMFORT_LIMITS = {
    'not_uncomfortable': 0.315,
    'a_little_uncomfortable': 0.63,
    'fairly_uncomfortable': 1.0,
    'uncomfortable': 1.6,
    'very_uncomfortable': 2.5,
}
