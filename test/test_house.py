"""The house rules, checked on the source: imports go one way with no cycle (imports inside
functions included), functions stay within 80 lines, modules within 500, the README within 250.

Read with `ast`, nothing imported: a module that cannot be imported here is still checked.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = 'terrain_ssl'
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500
MAX_README_LINES = 250
# Layers: a module may import its own layer and the ones below it, never one above.
LAYERS = {'core': 0, 'ros': 1, 'replay': 2, 'sim': 2, 'cli': 3, 'demo': 3}


def module_files(root: Path = REPO) -> dict:
    """Dotted module name -> path, for every .py file of the package."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob('*.py')):
        parts = list(path.relative_to(root).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts = parts[:-1]
        modules['.'.join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, known) -> set:
    """Package modules `name` imports anywhere in its file (top level or inside functions)."""
    is_package = path.name == '__init__.py'
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package, `level` up
                base = name.split('.')[:len(name.split('.')) - node.level + is_package]
                parent = '.'.join(base + ([node.module] if node.module else []))
            else:
                parent = node.module
            # `from a.b import c`: module a.b.c when it exists, otherwise names of a.b.
            candidates = [f'{parent}.{alias.name}' if f'{parent}.{alias.name}' in known
                          else parent for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:  # `import a.b.c` imports a.b.c
                candidate = candidate.rpartition('.')[0]
            if candidate and candidate != name:
                found.add(candidate)
    return found


def import_graph(root: Path = REPO) -> dict:
    modules = module_files(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict):
    """One import cycle as a list of modules (first == last), or None."""
    state = {}  # name -> 1 on the current path, 2 done

    def visit(name, path):
        state[name] = 1
        for other in sorted(graph.get(name, ())):
            if state.get(other) == 1:
                return path[path.index(other):] + [other]
            if other not in state:
                cycle = visit(other, path + [other])
                if cycle:
                    return cycle
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name, [name])
            if cycle:
                return cycle
    return None


def layer_of(name: str):
    parts = name.split('.')
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def long_functions(root: Path = REPO) -> list:
    out = []
    for name, path in module_files(root).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f'{name}.{node.name} ({length} lines)')
    return out


def long_modules(root: Path = REPO) -> list:
    return [f'{name} ({n} lines)' for name, path in module_files(root).items()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES]


def test_no_import_cycle_even_through_imports_inside_functions():
    assert find_cycle(import_graph()) is None


def test_imports_go_one_way_core_ros_replay_sim_cli():
    upward = [f'{name} -> {other}' for name, imports in import_graph().items()
              for other in imports
              if layer_of(name) is not None and layer_of(other) is not None
              and layer_of(other) > layer_of(name)]
    assert upward == []


def is_compiled_extension(module: str, name: str) -> bool:
    """`from terrain_ssl.core import _kernels`: the C extension its wrapper module loads."""
    return (REPO.joinpath(*module.split('.')) / f'{name}.c').exists()


def test_no_private_name_is_imported_from_another_module():
    crossing = []
    for name, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or '').startswith(PACKAGE):
                crossing += [f'{name}: {node.module}.{alias.name}' for alias in node.names
                             if alias.name.startswith('_')
                             and not is_compiled_extension(node.module, alias.name)]
    assert crossing == []


def test_functions_and_modules_stay_short():
    assert long_functions() == []
    assert long_modules() == []


def test_readme_stays_short():
    lines = len((REPO / 'README.md').read_text().splitlines())
    assert lines <= MAX_README_LINES


def test_the_checks_see_what_they_look_for(tmp_path):
    """The checker itself: a cycle through a function-level import, a long function and a long
    module in a scratch package are all found."""
    package = tmp_path / PACKAGE
    (package / 'core').mkdir(parents=True)
    (package / '__init__.py').write_text('')
    (package / 'core' / '__init__.py').write_text('')
    (package / 'core' / 'a.py').write_text('from terrain_ssl.core import b\n')
    body = '\n'.join(f'    x{i} = {i}' for i in range(MAX_FUNCTION_LINES))
    (package / 'core' / 'b.py').write_text(
        f'def late():\n    from . import a\n{body}\n' + '\n' * MAX_MODULE_LINES)
    assert find_cycle(import_graph(tmp_path)) in (
        ['terrain_ssl.core.a', 'terrain_ssl.core.b', 'terrain_ssl.core.a'],
        ['terrain_ssl.core.b', 'terrain_ssl.core.a', 'terrain_ssl.core.b'])
    assert long_functions(tmp_path) == [f'terrain_ssl.core.b.late '
                                        f'({MAX_FUNCTION_LINES + 2} lines)']
    assert long_modules(tmp_path) and long_modules(tmp_path)[0].startswith('terrain_ssl.core.b')


if __name__ == '__main__':
    raise SystemExit(pytest.main([__file__, '-q']))
