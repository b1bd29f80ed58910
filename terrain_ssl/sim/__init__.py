"""Off-road drive simulator: terrain, vehicle, sensors -> rosbag2, and a closed-loop step API."""
