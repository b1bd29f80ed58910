"""The launch file and config/terrain_ssl.yaml agree with the nodes, so a typo fails CI.

The ROS 2 launch tools are not installable from PyPI, so the launch file is checked by parsing it
(ast), not by running it; the nodes it names are built for real to see what they declare.
"""

import ast
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

from terrain_ssl.ros.config_file import declared_parameters, render, render_markdown
from terrain_ssl.ros.parameters import GENERIC_PARAMETERS
from terrain_ssl.ros.pipeline import NODE_MODULES, node_class

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / 'launch' / 'terrain_ssl.launch.py'
CONFIG_FILE = ROOT / 'config' / 'terrain_ssl.yaml'


def _console_scripts() -> dict:
    return {ep.name: ep.value for ep in entry_points(group='console_scripts')
            if ep.value.startswith('terrain_ssl.')}


def _launch_nodes() -> list:
    """Keyword arguments of every Node(...) call in the launch file, as AST nodes."""
    tree = ast.parse(LAUNCH_FILE.read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, 'id', None) == 'Node']
    return [{kw.arg: kw.value for kw in call.keywords} for call in calls]


def _launch_arguments() -> set:
    tree = ast.parse(LAUNCH_FILE.read_text())
    return {call.args[0].value for call in ast.walk(tree) if isinstance(call, ast.Call)
            and getattr(call.func, 'id', None) == 'DeclareLaunchArgument'}


@pytest.fixture
def nodes_by_name(ros_context):
    nodes = {}
    for module in NODE_MODULES:
        node = node_class(module)(context=ros_context)
        nodes[node.get_name()] = node
    yield nodes
    for node in nodes.values():
        node.destroy_node()


def test_launch_names_console_scripts_of_this_package():
    scripts = _console_scripts()
    launched = _launch_nodes()
    assert len(launched) == 3
    for kwargs in launched:
        assert kwargs['package'].value == 'terrain_ssl'
        executable = kwargs['executable'].value
        assert executable in scripts, f'{executable} is not a console script of terrain_ssl'
        assert kwargs['name'].value == executable  # node name = executable, as config expects
    # setup.cfg puts the scripts where `ros2 run` / launch_ros look for them
    assert 'script_dir=$base/lib/terrain_ssl' in (ROOT / 'setup.cfg').read_text()


def test_launch_arguments_and_remaps_match_the_nodes(nodes_by_name):
    arguments = _launch_arguments()
    assert {'use_sim_time', 'config', 'namespace', 'imu_topic', 'points_topic',
            'odom_topic'} <= arguments
    for kwargs in _launch_nodes():
        node = nodes_by_name[kwargs['name'].value]
        topics = {sub.topic_name for sub in node.subscriptions}
        topics |= {pub.topic_name for pub in node.publishers}
        for remap in getattr(kwargs.get('remappings'), 'elts', []):
            source = remap.elts[0].value
            assert '/' + source in topics, f'{node.get_name()} has no topic {source} to remap'
            target = remap.elts[1].args[0].value  # LaunchConfiguration('...')
            assert target in arguments
        # every parameter passed explicitly is one the node declares
        for item in kwargs['parameters'].elts:
            if isinstance(item, ast.Name) and item.id == 'sim_time':
                assert node.has_parameter('use_sim_time')


def test_config_yaml_matches_declared_parameters(nodes_by_name):
    config = yaml.safe_load(CONFIG_FILE.read_text())
    assert set(config) == {f'/**/{name}' for name in nodes_by_name}
    for name, node in nodes_by_name.items():
        in_yaml = config[f'/**/{name}']['ros__parameters']
        declared = declared_parameters(node)
        assert set(in_yaml) == set(declared), (
            f'{name}: only in YAML {sorted(set(in_yaml) - set(declared))}, '
            f'only declared {sorted(set(declared) - set(in_yaml))}')
        for parameter, value in in_yaml.items():
            default = declared[parameter][0]
            assert type(value) is type(default), (
                f'{name}.{parameter}: YAML {type(value).__name__}, node {type(default).__name__}')
        assert not set(in_yaml) & GENERIC_PARAMETERS


def test_config_yaml_is_current_and_documents_units(nodes_by_name):
    rendered = render(list(nodes_by_name.values()))
    assert rendered == CONFIG_FILE.read_text(), (
        'config/terrain_ssl.yaml is stale: run `python -m terrain_ssl.ros.config_file --write`')
    for line in rendered.splitlines():
        if re.match(r'^    [a-z_.]+: ', line):
            continue
        if line.startswith('    #'):
            assert len(line) > 8, 'a parameter without a description'


def test_the_parameter_table_is_current(nodes_by_name):
    tables = render_markdown(list(nodes_by_name.values())).strip()
    assert tables in (ROOT / 'docs' / 'parameters.md').read_text(), (
        "docs/parameters.md is stale: run `python -m terrain_ssl.ros.config_file --write`")


def test_config_yaml_loads_through_rcl(ros_context, tmp_path):
    """The file parses with rcl's own YAML parser and its values reach the nodes."""
    import rclpy
    from rclpy.context import Context

    text = CONFIG_FILE.read_text().replace('label.min_speed: 1.0', 'label.min_speed: 1.25')
    path = tmp_path / 'params.yaml'
    path.write_text(text)
    context = Context()
    rclpy.init(args=['x', '--ros-args', '--params-file', str(path)], context=context)
    try:
        node = node_class('terrain_ssl.ros.labeler_node')(context=context)
        assert node.get_parameter('label.min_speed').value == 1.25
        node.destroy_node()
    finally:
        context.try_shutdown()


def test_unparsable_ros_arguments_get_a_one_line_error(capsys):
    """`-p model_path:=` (an empty value) is refused by rcl itself: a clear error and exit 2,
    not a traceback from rclpy.init; the node is never built."""
    from terrain_ssl.ros.bringup import register
    from terrain_ssl.ros.node_main import run_node

    built = []
    code = run_node(lambda: built.append(1),
                    args=['roughness_learner', '--ros-args', '-p', 'model_path:='])
    assert code == 2 and built == []
    assert 'model_path:=' in capsys.readouterr().err

    import argparse
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(['bringup'])
    args.ros_args = ['--ros-args', '-p', 'model_path:=']
    assert args.func(args) == 2
    assert "name:=\"''\"" in capsys.readouterr().err


@pytest.mark.parametrize('override, expected', [
    ('label.batch_s:=-1.0', 'label.batch_s: Invalid parameter value (-1.0)'),  # out of range
    ('label.batch_s:=0', 'a decimal parameter needs a decimal value'),  # an int for a float
    ('vibration.shock_measure:=loud', "'loud' is not one of"),  # not one of the choices
])
def test_invalid_parameter_overrides_stop_a_node_with_one_line(capsys, override, expected):
    """An override rclpy or the node refuses at start-up (wrong type, out of range, not a
    choice): exit 2 with the parameter named, no traceback, no node left running."""
    from terrain_ssl.ros.node_main import run_node
    from terrain_ssl.ros.pipeline import node_class

    code = run_node(node_class('terrain_ssl.ros.labeler_node'),
                    args=['roughness_labeler', '--ros-args', '-p', override])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith('error: invalid parameter at start-up:') and expected in err, err
    assert 'Traceback' not in err
