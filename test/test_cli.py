"""`terrain-ssl`: a sub-command whose module cannot be imported fails loudly, in one line."""

from terrain_ssl import cli


def test_a_subcommand_that_cannot_be_imported_fails_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, 'SUBCOMMAND_MODULES',
                        cli.SUBCOMMAND_MODULES + ('terrain_ssl.no_such_module',))
    assert cli.main(['--help']) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert 'terrain_ssl.no_such_module' in err and err.startswith('terrain-ssl: ')


def test_every_subcommand_registers():
    usage = cli.build_parser().format_help()
    for command in ('demo', 'simulate', 'replay', 'play', 'closed-loop', 'bringup'):
        assert f'    {command} ' in usage
