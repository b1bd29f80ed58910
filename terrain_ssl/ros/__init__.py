"""Thin rclpy adapters over terrain_ssl.core: nodes and message <-> numpy conversion."""
