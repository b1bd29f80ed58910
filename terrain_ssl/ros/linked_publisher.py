"""A publisher that also hands each message to in-process listeners (see ros.wiring)."""

from __future__ import annotations

from typing import Callable


class LinkedPublisher:
    """A publisher that also hands each message to in-process listeners.

    Offline replay and single-process bringup chain nodes through `connect`, so messages between
    nodes are neither serialised nor dropped by DDS queues.
    """

    def __init__(self, node, msg_type, topic: str, qos):
        self.publisher = node.create_publisher(msg_type, topic, qos)
        self._listeners: list = []
        self.published = 0

    @property
    def topic_name(self) -> str:
        return self.publisher.topic_name

    def connect(self, callback: Callable) -> None:
        self._listeners.append(callback)

    def has_listeners(self) -> bool:
        """Whether a message published now would reach anyone (in process or over DDS): a node
        can skip building an output nobody takes."""
        return bool(self._listeners) or self.publisher.get_subscription_count() > 0

    def publish(self, msg) -> None:
        self.published += 1
        if self.publisher.get_subscription_count():  # nobody listening: skip the DDS copy
            self.publisher.publish(msg)
        for callback in self._listeners:
            callback(msg)
