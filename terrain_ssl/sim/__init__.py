"""Off-road drive simulator: terrain, vehicle, sensors -> rosbag2, and a closed-loop step API.

Modules (imported explicitly, so reading ground truth does not pull in the whole simulator):
    route         RoundedRectangleRoute: the closed loop, by arc length
    terrain       Terrain, TerrainConfig: ISO 8608 height map + bumps, potholes, rocks, slopes
    ground_truth  GroundTruth: per-cell detrended height RMS and ISO class; .load(bag_dir)
    vehicle       VehicleParams, FullCarSuspension: 7-DOF full car, exact discretisation
    lidar         lidar presets ('vlp16', 'os128') and the vectorised ray caster
    messages      SimMessage and CDR serialisation (rosbags typestore, no rclpy)
    world         World(config, seed).step(dt_s, commanded_speed_mps) -> [SimMessage]
    bag           simulate_bag(...), write_bag(world, ...), SpeedProfile ('5', '3:7', '3:7:30')
    cli           `terrain-ssl simulate` (register(subparsers), run(args))
    closed_loop   run_closed_loop: laps at a policy's speed with the real nodes, shocks counted
    oracle        the terrain's measured roughness per cell, for the oracle policy
    policy_comparison  constant vs terrain_ssl vs oracle on one route
    closed_loop_cli    `terrain-ssl closed-loop`
"""
