"""Pure algorithms on numpy, scipy, scikit-learn and the compiled kernels; never rclpy."""
