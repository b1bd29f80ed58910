"""Pure algorithms: numpy / scikit-learn / open3d / opencv only. Never import rclpy here."""
