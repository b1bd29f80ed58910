"""Fleet scale: many bags evaluated and tuned on Ray (`terrain-ssl evaluate`, `terrain-ssl tune`).

An optional part (`pip install "terrain_ssl[fleet]"`): the robot never imports it. The per-bag
work is exactly the single-bag replay (terrain_ssl.replay.runner), one Ray task per bag.
"""
