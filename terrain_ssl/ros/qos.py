"""Quality of service of the nodes' topics: best effort for sensors, reliable between nodes."""

from __future__ import annotations

from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

# Sensor inputs: best effort, keep last 5 (drivers publish best effort; a reliable subscriber would
# not match them). Our own topics: reliable, so a labeled patch is not lost between nodes.
SENSOR_QOS = qos_profile_sensor_data
# High-rate streams (IMU at 200-1000 Hz, odometry at 50-100 Hz): still best effort, but a queue of
# up to ~1 s, so a scan that takes 25 ms to process does not make the subscriber drop samples
# (a 5-deep queue overflows in 5 ms at 1 kHz, and every gap costs labels).
HIGH_RATE_SENSOR_QOS = QoSProfile(depth=200, reliability=ReliabilityPolicy.BEST_EFFORT,
                                  history=HistoryPolicy.KEEP_LAST)
RELIABLE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                          history=HistoryPolicy.KEEP_LAST)
# Labeled patches are training data, each label measured once: losing one is silent data loss.
# Reliable alone does not prevent that: with keep-last 10, a subscriber that falls 10 messages
# behind (a 25 ms scan, a model save, a loaded CPU) has its oldest unread samples overwritten in
# the writer's and the reader's history. Keep 1000 (~20 s at the usual ~50 messages/s; each is a
# few patches, ~100 bytes each): a burst or a stall is absorbed, then caught up. Not keep-all:
# a full keep-all history blocks the labeler's publish, and with it the IMU and scan callbacks.
# Publisher and subscriber both use it (the writer's history bounds what can be resent).
LABELS_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                        history=HistoryPolicy.KEEP_LAST)
