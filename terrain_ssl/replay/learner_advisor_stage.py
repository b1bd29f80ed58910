"""The second stage of a replay: roughness_learner and speed_advisor, fed in order by the first.

Data flows one way: bag -> labeler -> learner -> advisor, and the bag's odometry also reaches the
advisor. Nothing flows back. So a replay splits into two stages. The first reads and deserialises
the bag, drives the labeler, and hands the second an ordered stream of events: "bag time is now
t" and "this message arrives on topic X" (a labeler output, or a bag message the advisor
subscribes). The second stage applies them in that order with its own BagTimeDriver, so the
learner and the advisor get the same messages, at the same bag times, interleaved with the same
timer firings as when one driver runs all three nodes: the results are identical.

`LearnerAdvisorStage` is that second stage. In one process the replay calls it directly
(messages are handed over as objects, as the in-process links do); `stage_process` runs it in a
second process.
"""

from __future__ import annotations

from array import array
from typing import Optional

import numpy as np

from terrain_ssl.replay.options import MAP_TOPIC, ROLE_TOPICS, SPEED_TOPIC
from terrain_ssl.replay.outputs_mcap import open_outputs, published_counts
from terrain_ssl.replay.profiler import profiled
from terrain_ssl.replay.recorders import RouteMapRecorder, SampleRecorder
from terrain_ssl.ros.pipeline import NODE_MODULES, node_class
from terrain_ssl.ros.wiring import BagTimeDriver, link_in_process, linked_publishers_of

LEARNER_MODULE, ADVISOR_MODULE = NODE_MODULES[1:]


class LearnerAdvisorStage:
    """roughness_learner and speed_advisor with their own bag-time driver, and the recorders the
    replay report needs (prequential samples, speed limits, the route's roughness map).

    `advance(stamp_ns)` moves bag time; `deliver(topic, msg)` calls the subscribers of `topic`;
    `finish(first_ns)` flushes training, saves the model if asked and returns the results.
    `upstream_topics` are the labeler's outputs: their subscriptions are replaced by direct
    calls, as link_in_process does. `nodes`: the learner and the advisor when
    the caller has built them already (in its `context`). `outputs`: the caller's MCAP
    recorder; without one, a stage that records opens its own part file (second process).
    """

    def __init__(self, context, options, upstream_topics, profiler=None, nodes=None,
                 outputs=None):
        if nodes is None:
            nodes = [node_class(LEARNER_MODULE)(context=context),
                     node_class(ADVISOR_MODULE)(context=context)]
        self.learner, self.advisor = nodes
        self.nodes = [self.learner, self.advisor]
        if options.model_in:  # (imported here: the first process never learns)
            from terrain_ssl.core.learner import OnlineRoughnessRegressor
            self.learner.model = OnlineRoughnessRegressor.load(options.model_in)
        self.model_out = options.model_out
        if profiler is not None:
            profiler.add_nodes(self.nodes)

        self.samples = SampleRecorder()
        self.learner.add_prequential_listener(self.samples.add)
        link_in_process(self.nodes)
        self.driver = BagTimeDriver(self.nodes)
        self._own_outputs = open_outputs(options, stage_part=True) if outputs is None else None
        if (outputs or self._own_outputs) is not None:
            (outputs or self._own_outputs).attach(self.nodes, lambda: self.driver.now_ns)
        self._advance_to = profiled(profiler, 'bag_time_driver', self.driver.advance_to)
        self._pending_ns: Optional[int] = None  # bag time not yet applied (see advance)

        # Inputs: subscriptions left after linking. Those on the labeler's outputs are called
        # directly from now on; their DDS subscriptions go, so the labeler's publishers do not
        # also send every message over DDS to a subscriber that is never spun.
        self.callbacks: dict = {}
        self.message_types: dict = {}
        upstream_topics = set(upstream_topics)
        for node in self.nodes:
            for subscription in list(node.subscriptions):
                topic = subscription.topic_name
                self.callbacks.setdefault(topic, []).append(subscription.callback)
                self.message_types[topic] = subscription.msg_type
                if topic in upstream_topics:
                    node.destroy_subscription(subscription)

        # Packed as they come (one row per speed limit, 20 a second on long bags).
        self.speed_stamps_ns = array('q')
        self.speed_rows = array('d')  # speed_limit, x, y, speed per row
        self.latest_odom: dict = {}
        self._odom_topic = ROLE_TOPICS['odom']
        for publisher in linked_publishers_of(self.advisor):
            if publisher.topic_name == SPEED_TOPIC:
                publisher.connect(profiled(profiler, 'replay_recording', self._record_speed))
        self.route_map = RouteMapRecorder()
        for publisher in linked_publishers_of(self.learner):
            if publisher.topic_name == MAP_TOPIC:
                publisher.connect(profiled(profiler, 'replay_recording', self.route_map.add))

    def input_topics(self) -> list:
        return sorted(self.callbacks)

    def _record_speed(self, msg) -> None:
        odom = self.latest_odom
        self.speed_stamps_ns.append(self.driver.now_ns)
        self.speed_rows.extend((msg.data, odom.get('x', np.nan), odom.get('y', np.nan),
                                odom.get('v', np.nan)))

    def advance(self, stamp_ns: int) -> None:
        """Bag time moves to `stamp_ns`. Applied only before the next delivery (or at the end):
        between two deliveries nothing runs here but timers, and advance_to fires those at their
        own due times with the clocks at the due time, so one advance to the latest time is the
        same as one per bag message, and saves setting the clocks 250 times a bag second.
        The first advance is applied at once: it starts the timers' phase."""
        if self.driver.now_ns is None:
            self._advance_to(stamp_ns)
        elif self._pending_ns is None or stamp_ns > self._pending_ns:
            self._pending_ns = stamp_ns

    def _apply_pending_time(self) -> None:
        if self._pending_ns is not None:
            self._advance_to(self._pending_ns)
            self._pending_ns = None

    def deliver(self, topic: str, msg) -> None:
        self._apply_pending_time()
        if topic == self._odom_topic:
            pose = msg.pose.pose.position
            self.latest_odom.update(x=pose.x, y=pose.y, v=msg.twist.twist.linear.x)
        for callback in self.callbacks[topic]:
            callback(msg)

    def deliver_bag_message(self, topic: str, bag_message) -> None:
        """A message read from the bag (a `bag.BagMessage`), on node topic `topic`."""
        self.deliver(topic, bag_message.message)

    def finish(self, first_ns: Optional[int]) -> dict:
        """Flush, save the model when asked; what the report needs from this stage."""
        self._apply_pending_time()
        self.learner.flush_training()
        if self.model_out and self.learner.model.is_fitted:
            self.learner.model.save(self.model_out)
        result = {
            'samples': self.samples.arrays(first_ns or 0),
            'speed': {},
            'final_map': self.route_map.result(),
            'rejected': {node.get_name(): dict(node.rejects.counts) for node in self.nodes},
            'published': published_counts(self.nodes),
        }
        if self._own_outputs is not None:
            self._own_outputs.close()
            self._own_outputs = None
        if self.speed_stamps_ns:
            stamps_ns = np.frombuffer(self.speed_stamps_ns, dtype=np.int64)
            rows = np.frombuffer(self.speed_rows, dtype=float).reshape(-1, 4).copy()
            result['speed'] = {'t_s': (stamps_ns - (first_ns or 0)) / 1e9,
                               'speed_limit': rows[:, 0], 'x': rows[:, 1], 'y': rows[:, 2],
                               'speed': rows[:, 3]}
        return result

    def destroy(self) -> None:
        if self._own_outputs is not None:  # stopped before finish: no part left behind
            self._own_outputs.discard()
        for node in self.nodes:
            node.destroy_node()
