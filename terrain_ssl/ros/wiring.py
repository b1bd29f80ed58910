"""Running several nodes in one process: direct in-process links and a bag-time driver.

Single-process bringup and offline replay both use the same node classes as the live system. The
links hand each message from a publishing node's `LinkedPublisher` straight to the consuming
node's subscription callback, so nothing is serialised or queued between nodes; the DDS publisher
is kept so RViz, Foxglove and `ros2 topic echo` still see every topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from rclpy.clock import ClockType
from rclpy.time import Time

from terrain_ssl.ros.linked_publisher import LinkedPublisher


@dataclass
class Link:
    topic: str
    publisher_node: str
    subscriber_node: str


def linked_publishers_of(node) -> list:
    """The node's LinkedPublishers (its outputs that in-process links can connect to)."""
    return [value for value in vars(node).values() if isinstance(value, LinkedPublisher)]


def link_in_process(nodes: Iterable) -> list:
    """Connect every LinkedPublisher to the same-topic subscriptions of the other nodes; return
    the links.

    The consuming node's DDS subscription on that topic is destroyed, so each message arrives
    once, directly. (A publisher outside this process on the same topic is then not heard by
    the in-process consumer; bringup is meant to own these topics.)
    """
    nodes = list(nodes)
    links = []
    for producer in nodes:
        for publisher in linked_publishers_of(producer):
            for consumer in nodes:
                if consumer is producer:
                    continue
                for subscription in list(consumer.subscriptions):
                    if subscription.topic_name == publisher.topic_name:
                        publisher.connect(subscription.callback)
                        consumer.destroy_subscription(subscription)
                        links.append(Link(publisher.topic_name, producer.get_name(),
                                          consumer.get_name()))
    return links


class BagTimeDriver:
    """Drives nodes in bag time: sets their sim-time clocks and fires their timers when due.

    Nodes must be created with use_sim_time true. Deterministic: nothing depends on wall time.

    `callbacks_read_clock=False` is for nodes whose subscription callbacks take all time from
    message stamps and read their clock only in timers (the labeler): the clocks are then set
    when a timer fires (to its due time) and by `sync_clocks()`, not on every message, which
    saves setting every node's clock on every message of the replay's busier process.
    """

    def __init__(self, nodes: Iterable, callbacks_read_clock: bool = True):
        self.nodes = list(nodes)
        self.callbacks_read_clock = callbacks_read_clock
        self._timers = []  # [next_due_ns, period_ns, callback]
        for node in self.nodes:
            for timer in node.timers:
                timer.cancel()  # executors never spin these nodes; we fire the callbacks
                self._timers.append([None, int(timer.timer_period_ns), timer.callback])
        self.now_ns = None  # bag time
        self._clock_ns = None  # what the nodes' clocks were last set to
        self._next_due_ns = None  # earliest timer due, once the timers are started

    def advance_to(self, stamp_ns: int) -> None:
        """Move bag time to `stamp_ns` (never backwards), firing every timer due on the way."""
        if self.now_ns is not None and stamp_ns <= self.now_ns:
            return  # same time (clocks already there), or recorded out of order: monotonic
        if self._next_due_ns is None:
            for entry in self._timers:
                entry[0] = stamp_ns + entry[1]
            self._next_due_ns = min((entry[0] for entry in self._timers), default=None)
        # Called for every message: the usual case, no timer due, is one comparison.
        while self._next_due_ns is not None and self._next_due_ns <= stamp_ns:
            entry = min(self._timers, key=lambda item: item[0])
            self.now_ns = entry[0]  # what the timer and everything it publishes to sees
            self._set_clocks(entry[0])
            entry[2]()
            entry[0] += entry[1]
            self._next_due_ns = min(item[0] for item in self._timers)
        self.now_ns = stamp_ns
        if self.callbacks_read_clock:
            self._set_clocks(stamp_ns)

    def sync_clocks(self) -> None:
        """Set the nodes' clocks to the current bag time (with callbacks_read_clock=False,
        before anything outside a timer reads them)."""
        if self.now_ns is not None:
            self._set_clocks(self.now_ns)

    def _set_clocks(self, stamp_ns: int) -> None:
        if stamp_ns == self._clock_ns:
            return
        self._clock_ns = stamp_ns
        time = Time(nanoseconds=stamp_ns, clock_type=ClockType.ROS_TIME)
        for node in self.nodes:
            node.get_clock().set_ros_time_override(time)


def serialize_node_callbacks(node) -> None:
    """Make all of a node's callbacks mutually exclusive, including direct in-process calls.

    With a multi-threaded executor, an in-process link runs the consumer's subscription callback
    in the producer's thread; one re-entrant lock per node keeps the consumer's own timers and
    services from running at the same time (nodes are written single-threaded).
    """
    import functools
    import threading

    lock = threading.RLock()

    def locked(callback):
        @functools.wraps(callback)
        def call(*args, **kwargs):
            with lock:
                return callback(*args, **kwargs)
        return call

    for entity in list(node.subscriptions) + list(node.timers) + list(node.services):
        entity.callback = locked(entity.callback)


def subscription_callbacks(nodes: Iterable) -> dict:
    """Resolved topic name -> callbacks of the nodes' remaining subscriptions (inputs)."""
    callbacks: dict = {}
    for node in nodes:
        for subscription in node.subscriptions:
            callbacks.setdefault(subscription.topic_name, []).append(subscription.callback)
    return callbacks


def share_clock_subscription(nodes: Iterable) -> int:
    """One /clock subscription for all the nodes of a process (use_sim_time), not one each.

    The first node that has one keeps it, and each /clock message it takes also sets the other
    nodes' clocks; theirs are destroyed. Returns how many were removed. (A later change of
    use_sim_time on another node subscribes that node again, as rclpy does.)
    """
    nodes = list(nodes)
    subscriptions = [(node, subscription) for node in nodes
                     for subscription in node.subscriptions if subscription.topic_name == '/clock']
    if len(subscriptions) < 2:
        return 0
    keeper = subscriptions[0][1]
    followers = []
    for node, subscription in subscriptions[1:]:
        node.destroy_subscription(subscription)
        followers.append(node.get_clock())
    own_callback = keeper.callback

    def on_clock(msg):
        own_callback(msg)
        time = Time.from_msg(msg.clock, clock_type=ClockType.ROS_TIME)
        for clock in followers:
            clock.set_ros_time_override(time)
    keeper.callback = on_clock
    return len(followers)
