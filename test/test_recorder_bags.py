"""Every real `ros2 bag record` test bag from rosbag2 is read in full, or refused in one line.

The bags (../shared/realdata/rosbag2_recorder, Apache-2.0) were written by rosbag2's own
recorder across its versions: metadata versions 4-8, sqlite3 and mcap, split files, QoS profiles
that differ between metadata.yaml and the storage file, type names without `/msg/`, service-event
topics whose definitions rosbags cannot parse, a wrong serialisation format, an empty bag.
The expected counts below are the recorder's own (metadata.yaml `message_count`, or the storage
file's statistics where a bag has no metadata.yaml).
"""

import subprocess
import sys
from pathlib import Path

import pytest

from terrain_ssl.replay.bag import Bag, BagError, ReadCounts, message_class

REPO = Path(__file__).resolve().parents[1]


def _realdata_dir() -> Path:
    for candidate in (REPO.parent / 'shared' / 'realdata', Path('/work/shared/realdata')):
        if (candidate / 'rosbag2_recorder').is_dir():
            return candidate / 'rosbag2_recorder'
    pytest.skip('the real recordings (../shared/realdata/rosbag2_recorder) are not here')


PY, TESTS, TRANSPORT, CPP = ('rosbag2_py/test/resources', 'rosbag2_tests/resources',
                             'rosbag2_transport/test/resources', 'rosbag2_cpp/test/rosbag2_cpp')
# bag (relative to rosbag2_recorder) -> messages it holds, over all topics
READABLE = {
    'ros2bag/test/resources/empty_bag': 0,
    f'{PY}/mcap/convert_a': 150, f'{PY}/sqlite3/convert_a': 150,
    f'{PY}/mcap/convert_b': 75, f'{PY}/sqlite3/convert_b': 75,
    f'{PY}/mcap/talker': 20, f'{PY}/sqlite3/talker': 20,
    f'{PY}/mcap/talker/talker.mcap': 20, f'{PY}/sqlite3/talker/talker.db3': 20,
    f'{PY}/mcap/wbag': 6074, f'{PY}/sqlite3/wbag': 6074,
    f'{PY}/mcap/reindex_test_bags/multiple_files': 3177,
    f'{PY}/sqlite3/reindex_test_bags/multiple_files': 3177,
    f'{TESTS}/mcap/bag_with_topics_and_service_events': 10,
    f'{TESTS}/sqlite3/bag_with_topics_and_service_events': 10,
    f'{TESTS}/mcap/cdr_test': 7, f'{TESTS}/sqlite3/cdr_test': 7,
    f'{TESTS}/sqlite3/wrong_rmw_test': 7,  # metadata says wrong_format, the storage says cdr
    f'{TRANSPORT}/mcap/rewriter_a': 150, f'{TRANSPORT}/sqlite3/rewriter_a': 150,
    f'{TRANSPORT}/mcap/rewriter_b': 75, f'{TRANSPORT}/sqlite3/rewriter_b': 75,
    f'{TRANSPORT}/mcap/test_bag_for_seek': 5, f'{TRANSPORT}/sqlite3/test_bag_for_seek': 5,
    f'{CPP}/bags/only_services.mcap': 12, f'{CPP}/bags/only_topics.mcap': 7,
    f'{CPP}/bags/topics_and_services.mcap': 13, f'{CPP}/bags/topics_and_services.db3': 13,
}
# bags that hold nothing usable -> the cause the one-line error names
REFUSED = {
    f'{TESTS}/mcap/wrong_rmw_test': "stored as 'wrong_format', not CDR",
    f'{TESTS}/empty_dir': 'not a rosbag2 bag',
}


def test_every_recorder_bag_is_listed_here():
    """A bag added to the folder gets a test: every bag directory / loose file is named above."""
    root = _realdata_dir()
    found = {str(p.parent.relative_to(root)) for p in root.rglob('metadata.yaml')}
    found |= {str(p.relative_to(root)) for p in root.rglob('bags/*.*')}
    found |= {str(p.parent.relative_to(root)) for p in root.rglob('multiple_files/*_0.*')}
    found |= {str(p.relative_to(root)) for p in root.rglob('empty_dir')}
    assert found <= set(READABLE) | set(REFUSED)


@pytest.mark.parametrize('name', sorted(READABLE))
def test_recorder_bag_reads_every_message(name):
    """Every message of every topic comes out (raw), as many as the recorder wrote, and the
    bag's own counts agree; the installed types are deserialised too."""
    with Bag(_realdata_dir() / name) as bag:
        topics = bag.topics()
        assert sum(info.count for info in topics.values()) == READABLE[name]
        read: dict = {}
        stamps = []
        for topic, _, stamp_ns, payload in bag.raw_messages(list(topics)):
            read[topic] = read.get(topic, 0) + 1
            stamps.append(stamp_ns)
            assert isinstance(payload, (bytes, memoryview)) and len(payload) >= 4  # CDR header
        assert sum(read.values()) == READABLE[name]
        assert read == {t: i.count for t, i in topics.items() if i.count}
        if stamps:
            assert bag.start_ns == min(stamps) and bag.end_ns == max(stamps)
        installed = [t for t, i in topics.items() if _installed(i.msgtype)]
        counts = ReadCounts()
        messages = list(bag.messages(installed, counts))
        assert counts.mismatches() == {} and counts.undecodable == {}
        assert len(messages) == sum(topics[t].count for t in installed)


def _installed(msgtype: str) -> bool:
    try:
        message_class(msgtype)
    except BagError:
        return False
    return True


@pytest.mark.parametrize('name', sorted(REFUSED))
def test_recorder_bag_without_usable_messages_is_refused_in_one_line(name):
    with pytest.raises(BagError, match=REFUSED[name]) as caught:
        with Bag(_realdata_dir() / name) as bag:
            list(bag.raw_messages(list(bag.topics())))
    assert '\n' not in str(caught.value)


@pytest.mark.parametrize('name', [f'{PY}/sqlite3/talker', f'{PY}/mcap/talker',
                                  f'{TESTS}/sqlite3/wrong_rmw_test'])
def test_metadata_that_disagrees_with_the_storage_is_said_in_one_line(name):
    with Bag(_realdata_dir() / name) as bag:
        notes = bag.notes
    assert notes and all('\n' not in note and 'reading the storage files' in note
                         for note in notes)


def test_type_names_without_msg_are_normalised():
    with Bag(_realdata_dir() / f'{TRANSPORT}/mcap/test_bag_for_seek') as bag:
        assert bag.topics()['topic1'].msgtype == 'test_msgs/msg/BasicTypes'


@pytest.mark.parametrize('name', [f'{PY}/mcap/wbag', f'{PY}/sqlite3/wbag',
                                  f'{PY}/mcap/convert_a'])
def test_a_time_window_expects_the_bags_own_count_within_it(name):
    """--start/--duration: the expected counts come from the storage index within the window
    (not from what was read), and match the messages read there."""
    with Bag(_realdata_dir() / name) as bag:
        topics = list(bag.topics())
        stamps = [m[2] for m in bag.raw_messages(topics)]
        start_ns = bag.start_ns + (bag.end_ns - bag.start_ns) // 3
        end_ns = bag.start_ns + 2 * (bag.end_ns - bag.start_ns) // 3
        expected = bag.expected_counts(topics, start_ns, end_ns)
        in_window = sum(1 for t in stamps if start_ns <= t < end_ns)
        assert 0 < sum(expected.values()) == in_window < len(stamps)
        counts = ReadCounts()
        installed = [t for t in topics if _installed(bag.topics()[t].msgtype)]
        list(bag.messages(installed, counts, start_ns, end_ns))
        assert counts.mismatches() == {}


@pytest.mark.parametrize('name', [f'{TRANSPORT}/mcap/test_bag_for_seek',
                                  f'{TESTS}/mcap/wrong_rmw_test', f'{TESTS}/empty_dir'])
def test_play_refuses_in_one_line_without_a_traceback(name):
    """`terrain-ssl play` on a bag with nothing it can publish: one `error:` line, exit 1."""
    result = subprocess.run([sys.executable, '-m', 'terrain_ssl.cli', 'play',
                             str(_realdata_dir() / name)], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 1, result.stderr
    assert 'Traceback' not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1, result.stderr


@pytest.mark.parametrize('name', [f'{PY}/sqlite3/talker', f'{PY}/mcap/talker/talker.mcap'])
def test_play_publishes_all_20_talker_messages_over_dds(name, ros_context):
    """The talker bags (metadata QoS differs from the storage's) reach a real subscriber over
    real DDS: 10 on /topic, 10 on /rosout, and nothing read is missing from the bag's counts."""
    import threading

    from rcl_interfaces.msg import Log, ParameterEvent
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile
    from std_msgs.msg import String

    from conftest import spin_until
    from terrain_ssl.replay.player import play

    prefix = f'/t20_{abs(hash(name)) % 10_000}'
    node = Node('talker_listener', context=ros_context)
    received = {'topic': [], 'rosout': []}
    qos = QoSProfile(depth=100)
    node.create_subscription(String, f'{prefix}/topic',
                             lambda m: received['topic'].append(m.data), qos)
    node.create_subscription(Log, f'{prefix}/rosout', lambda m: received['rosout'].append(m), qos)
    # (the bag's third topic has no messages: subscribed so that the player's wait for every
    # topic's subscriber ends at once)
    node.create_subscription(ParameterEvent, f'{prefix}/parameter_events', lambda m: None, qos)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    result = {}
    player = threading.Thread(target=lambda: result.update(counts=play(
        _realdata_dir() / name, rate=50.0, progress=False, start_delay_s=20.0,
        remap={'/topic': f'{prefix}/topic', '/rosout': f'{prefix}/rosout',
               '/parameter_events': f'{prefix}/parameter_events'})))
    player.start()
    try:
        assert spin_until(executor, lambda: len(received['topic']) == 10
                          and len(received['rosout']) == 10 and not player.is_alive(),
                          timeout_s=60.0), {k: len(v) for k, v in received.items()}
    finally:
        player.join(timeout=60.0)
        executor.shutdown()
        node.destroy_node()
    counts = result['counts']
    assert counts.read == {'/topic': 10, '/rosout': 10}
    assert counts.mismatches() == {} and counts.expected['/topic'] == 10
    assert received['topic'][0].startswith('Hello')
