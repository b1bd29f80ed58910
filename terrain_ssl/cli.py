"""`terrain-ssl`: one command for simulating drives, replaying bags, the demo and bringup.

Each sub-command lives in the module that implements it and registers itself through
`register(subparsers)`, which adds an argparse parser whose `func(args) -> int` runs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Module paths, in the order `terrain-ssl --help` lists them.
SUBCOMMAND_MODULES = (
    'terrain_ssl.demo',
    'terrain_ssl.sim.cli',
    'terrain_ssl.replay.cli',
    'terrain_ssl.replay.calibrate',
    'terrain_ssl.sim.closed_loop_cli',
    'terrain_ssl.ros.bringup',
    'terrain_ssl.patches_cli',
    'terrain_ssl.fleet.cli',
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='terrain-ssl',
        description='Online self-supervised terrain-roughness learning for off-road robots.')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise SubcommandImportError(f'terrain-ssl: cannot load the commands of '
                                        f'{module_name}: {error}') from error
        module.register(subparsers)
    return parser


class SubcommandImportError(RuntimeError):
    """A sub-command's module does not import (a missing dependency, a broken install)."""


def main(argv=None) -> int:
    try:
        parser = build_parser()
    except SubcommandImportError as error:  # one clear line, not a traceback, and a failure
        print(error, file=sys.stderr)
        return 1
    args, ros_args = parser.parse_known_args(argv)
    if getattr(args, 'command', None) is None:
        parser.print_help()
        return 2
    if ros_args and not getattr(args, 'accepts_ros_args', False):
        parser.error(f'unrecognized arguments: {" ".join(ros_args)}')
    args.ros_args = ros_args
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
