"""The speed advisor's Nav2 outputs: a SpeedFilter mask and a roughness costmap.

Out: terrain_ssl/speed_mask        (nav_msgs/OccupancyGrid, odom frame, rolling window around
                                    the vehicle: per cell the speed allowed while base_link is
                                    over it, in % of v_max_mps: a SpeedFilter mask of type 1
                                    with base 0 and multiplier 1, config/nav2_speed_filter.yaml)
     terrain_ssl/roughness_costmap (nav_msgs/OccupancyGrid, 0..100 = conservative roughness /
                                    costmap_full_scale, -1 unknown: for a costmap StaticLayer)

Both are latched (transient local, depth 1) as Nav2's map server publishes masks, so that a
costmap filter that starts later still gets the latest grid; Nav2's filters subscribe that way,
and a volatile publisher would not match them. Nothing is computed while nobody listens.
"""

from __future__ import annotations

from builtin_interfaces.msg import Time
from nav_msgs.msg import OccupancyGrid
from std_msgs.msg import Header
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from terrain_ssl.core.advisor import SpeedAdvisor
from terrain_ssl.core.speed_mask import MaskConfig, Nav2Grids, nav2_grids
from terrain_ssl.ros.conversions import occupancy_grid
from terrain_ssl.ros.linked_publisher import LinkedPublisher
from terrain_ssl.ros.parameters import ParamSpec

LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL,
                         history=HistoryPolicy.KEEP_LAST)

_DEFAULTS = MaskConfig()

NAV2_PARAMS = [
    ParamSpec('nav2_rate_hz', 20.0, 'Rate of terrain_ssl/speed_mask and '
              'terrain_ssl/roughness_costmap (Hz); match the local costmap\'s update_frequency '
              '(new predictions reach the SpeedFilter at the slower of the two).', min=0.1,
              max=100.0, read_only=True),
    ParamSpec('mask_size_m', _DEFAULTS.size_m, 'Side of the square window of the speed mask '
              'and the costmap, centred on the vehicle (m).', min=1.0, max=1000.0),
    ParamSpec('footprint_length_m', _DEFAULTS.footprint_length_m,
              'Length of the ground the vehicle touches, rearmost to foremost wheel or track '
              'contact (m), as the labeler\'s footprint: a rough cell limits the mask while any '
              'part of it is over the cell.', min=0.01, max=100.0),
    ParamSpec('footprint_width_m', _DEFAULTS.footprint_width_m,
              'Width of the ground the vehicle touches (m); half of it also widens the '
              'costmap.', min=0.01, max=100.0),
    ParamSpec('footprint_offset_x_m', _DEFAULTS.footprint_offset_x_m,
              'Centre of that ground contact ahead of base_link (m).', min=-50.0, max=50.0),
    ParamSpec('mask_reaction_s', _DEFAULTS.reaction_s,
              'Time from base_link entering a mask cell until the vehicle follows the speed '
              'read there (s): the local costmap\'s update period (the SpeedFilter reads the '
              'mask once per update) plus the controller\'s period. The mask\'s braking adds '
              'the distance driven meanwhile.', min=0.0, max=10.0),
    ParamSpec('mask_unknown', 'cautious', 'Speed mask over ground with no prediction: '
              '"cautious" (cautious_speed_mps) or "no_limit" (v_max_mps).',
              choices=('cautious', 'no_limit')),
    ParamSpec('costmap_full_scale', _DEFAULTS.costmap_full_scale,
              'Conservative roughness ((m/s^2)/(m/s)) that maps to cost 100 in '
              'terrain_ssl/roughness_costmap.', min=1e-6, max=1e6),
]


def mask_config_from_values(values: dict) -> MaskConfig:
    """Parameter values -> MaskConfig; raises ValueError when they do not fit together."""
    return MaskConfig(size_m=values['mask_size_m'],
                      footprint_length_m=values['footprint_length_m'],
                      footprint_width_m=values['footprint_width_m'],
                      footprint_offset_x_m=values['footprint_offset_x_m'],
                      reaction_s=values['mask_reaction_s'],
                      unknown_is_cautious=values['mask_unknown'] == 'cautious',
                      costmap_full_scale=values['costmap_full_scale'])


def grid_message(cells, grids: Nav2Grids, frame_id: str, stamp: Time) -> OccupancyGrid:
    window = grids.window
    return occupancy_grid(cells, window.origin_x_m, window.origin_y_m, window.resolution_m,
                          Header(frame_id=frame_id, stamp=stamp))


def nav2_outlets(node) -> tuple:
    """The (speed mask, roughness costmap) publishers of a node. The node keeps them as its own
    attributes, where in-process wiring (replay, bringup, closed loop) finds its outlets."""
    return (LinkedPublisher(node, OccupancyGrid, 'terrain_ssl/speed_mask', LATCHED_QOS),
            LinkedPublisher(node, OccupancyGrid, 'terrain_ssl/roughness_costmap', LATCHED_QOS))


class Nav2Outputs:
    """Publishes the mask and the costmap of a SpeedAdvisor's current map and pose."""

    def __init__(self, speed_mask_outlet: LinkedPublisher,
                 costmap_outlet: LinkedPublisher):
        self.speed_mask_outlet = speed_mask_outlet
        self.costmap_outlet = costmap_outlet
        self.last_grids = None

    def publish(self, advisor: SpeedAdvisor, mask_config: MaskConfig, frame_id: str,
                stamp: Time) -> bool:
        """Publish both grids around the vehicle; False when there is no pose yet or nobody
        listens."""
        wanted = (self.speed_mask_outlet.has_listeners(), self.costmap_outlet.has_listeners())
        state = advisor.state
        if state is None or not any(wanted):
            return False
        grids = nav2_grids(advisor.map, (state.x_m, state.y_m), state.yaw_rad, advisor.config,
                           mask_config, advisor.path_xy_m)
        self.last_grids = grids
        if wanted[0]:
            self.speed_mask_outlet.publish(grid_message(grids.speed_percent, grids, frame_id,
                                                        stamp))
        if wanted[1]:
            self.costmap_outlet.publish(grid_message(grids.cost, grids, frame_id, stamp))
        return True
