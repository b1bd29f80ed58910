"""config/nav2_terrain_ssl.yaml: parses, every key is one Nav2 documents, topics match ours.

Nav2 is not installable here (no PyPI wheels), so the file cannot be loaded by Nav2 itself in
the suite; instead every key is checked against the parameters Nav2's configuration guide
documents for Jazzy and Kilted (docs.nav2.org: Costmap 2D, Static Layer, Speed Filter, Costmap
Filter Info Server, Lifecycle Manager, Controller Server), copied below.
"""

from pathlib import Path

import yaml

from terrain_ssl.core.speed_mask import SPEED_FILTER_TYPE_PERCENT

CONFIG = Path(__file__).resolve().parents[1] / 'config' / 'nav2_terrain_ssl.yaml'

COSTMAP_2D = {'always_send_full_costmap', 'footprint_padding', 'footprint', 'global_frame',
              'height', 'width', 'lethal_cost_threshold', 'map_topic', 'observation_sources',
              'origin_x', 'origin_y', 'plugins', 'filters', 'publish_frequency', 'resolution',
              'robot_base_frame', 'robot_radius', 'rolling_window', 'track_unknown_space',
              'transform_tolerance', 'trinary_costmap', 'unknown_cost_value',
              'update_frequency', 'use_maximum', 'clearable_layers', 'use_sim_time'}
STATIC_LAYER = {'plugin', 'enabled', 'footprint_clearing_enabled', 'restore_cleared_footprint',
                'subscribe_to_updates', 'map_subscribe_transient_local', 'transform_tolerance',
                'map_topic'}
SPEED_FILTER = {'plugin', 'enabled', 'filter_info_topic', 'speed_limit_topic',
                'transform_tolerance'}
FILTER_INFO_SERVER = {'type', 'filter_info_topic', 'mask_topic', 'base', 'multiplier',
                      'use_sim_time'}
LIFECYCLE_MANAGER = {'node_names', 'autostart', 'bond_timeout', 'attempt_respawn_reconnection',
                     'bond_respawn_max_duration', 'use_sim_time'}
CONTROLLER_SERVER = {'speed_limit_topic'}  # among many; the one this file sets


def load():
    return yaml.safe_load(CONFIG.read_text())


def test_every_key_is_a_documented_nav2_parameter():
    config = load()
    costmap = config['local_costmap']['local_costmap']['ros__parameters']
    layers = set(costmap['plugins']) | set(costmap['filters'])
    assert set(costmap) - layers <= COSTMAP_2D
    for name in costmap['plugins']:
        assert costmap[name]['plugin'] == 'nav2_costmap_2d::StaticLayer'
        assert set(costmap[name]) <= STATIC_LAYER
    for name in costmap['filters']:
        assert costmap[name]['plugin'] == 'nav2_costmap_2d::SpeedFilter'
        assert set(costmap[name]) <= SPEED_FILTER
    info = config['terrain_speed_filter_info_server']['ros__parameters']
    assert set(info) <= FILTER_INFO_SERVER
    manager = config['lifecycle_manager_terrain_filters']['ros__parameters']
    assert set(manager) <= LIFECYCLE_MANAGER
    assert set(config['controller_server']['ros__parameters']) <= CONTROLLER_SERVER
    assert set(config) == {'local_costmap', 'terrain_speed_filter_info_server',
                           'lifecycle_manager_terrain_filters', 'controller_server'}


def test_the_filter_reads_our_mask_the_way_we_write_it():
    config = load()
    costmap = config['local_costmap']['local_costmap']['ros__parameters']
    info = config['terrain_speed_filter_info_server']['ros__parameters']
    speed_filter = costmap[costmap['filters'][0]]
    # Percent of maximum speed, value = percent: what terrain_ssl.core.speed_mask writes.
    assert info['type'] == SPEED_FILTER_TYPE_PERCENT
    assert (info['base'], info['multiplier']) == (0.0, 1.0)
    assert info['mask_topic'] == '/terrain_ssl/speed_mask'
    assert speed_filter['filter_info_topic'] == info['filter_info_topic']
    manager = config['lifecycle_manager_terrain_filters']['ros__parameters']
    assert manager['node_names'] == ['terrain_speed_filter_info_server']
    assert speed_filter['speed_limit_topic'] == \
        config['controller_server']['ros__parameters']['speed_limit_topic']
    layer = costmap[costmap['plugins'][0]]
    assert layer['map_topic'] == '/terrain_ssl/roughness_costmap'
    # Graded costs: a trinary costmap would turn every roughness below 100 into free space.
    assert costmap['trinary_costmap'] is False
    assert costmap['global_frame'] == 'odom' and costmap['rolling_window'] is True


def test_the_masks_reaction_time_covers_the_shipped_update_rates():
    """speed_advisor's defaults fit the shipped costmap: the mask is published at least as often
    as the SpeedFilter reads it, and mask_reaction_s covers one costmap update period plus one
    controller period (Nav2's default controller_frequency, 20 Hz), or the mask's braking would
    plan with less time than the vehicle takes to react."""
    from terrain_ssl.ros.nav2_outputs import NAV2_PARAMS

    defaults = {spec.name: spec.default for spec in NAV2_PARAMS}
    costmap = load()['local_costmap']['local_costmap']['ros__parameters']
    controller_period_s = 1.0 / 20.0
    assert defaults['nav2_rate_hz'] >= costmap['update_frequency']
    assert defaults['mask_reaction_s'] >= 1.0 / costmap['update_frequency'] \
        + controller_period_s - 1e-9
