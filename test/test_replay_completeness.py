"""Replay never loses messages silently: a real rosbag2 whose storage holds fewer messages than
its metadata.yaml says (rows deleted from the sqlite3 file, as a recorder that died mid-write or
a damaged copy leaves it) is replayed as its storage holds it, and one line names the topic and
both counts. (Messages the storage holds but the reader does not deliver are a loss that stops
the replay: test_bag_reading.py::test_a_bag_that_reads_short_is_a_loss_in_full_and_in_a_window.)
"""

import json

import sqlite3

import yaml
from bag_factory import make_messages, write_rosbag2

from terrain_ssl.cli import main as cli_main

IMU = '/imu/data'


def bag_that_reads_short(path, drop_every=7):
    """A sqlite3 rosbag2 of a 3 s drive with every `drop_every`-th IMU record deleted from the
    storage file; metadata.yaml still counts them all. Returns (bag dir, recorded, left)."""
    bag = write_rosbag2(path, make_messages(duration_s=3.0), 'sqlite3')
    metadata = yaml.safe_load((bag / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    recorded = {entry['topic_metadata']['name']: entry['message_count']
                for entry in metadata['topics_with_message_count']}
    (db3,) = bag.glob('*.db3')
    with sqlite3.connect(db3) as db:
        (topic_id,) = db.execute('SELECT id FROM topics WHERE name = ?', (IMU,)).fetchone()
        db.execute('DELETE FROM messages WHERE topic_id = ? AND id % ? = 0',
                   (topic_id, drop_every))
        (left,) = db.execute('SELECT COUNT(*) FROM messages WHERE topic_id = ?',
                             (topic_id,)).fetchone()
    assert 0 < left < recorded[IMU]
    return bag, recorded[IMU], left


def test_metadata_counting_more_than_the_storage_holds_is_said_in_one_line(tmp_path, capsys):
    bag, recorded, left = bag_that_reads_short(tmp_path / 'short')
    code = cli_main(['replay', str(bag), '--out', str(tmp_path / 'out'), '--no-progress'])
    err = capsys.readouterr().err
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith('note:') and IMU in line]
    assert len(notes) == 1 and f'({recorded} vs {left} messages)' in notes[0], err
    assert 'Traceback' not in err, err
    metrics = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    assert metrics['info']['messages_read'][IMU] == left  # every message the storage holds

