"""The code's layout as DESIGN.md describes it: each top-level module imports only from its own floor or the floors
below (imports inside functions included), no import circle, and no function over 60 lines but argparse builders."""
import ast
import glob
import os

from conftest import REPO

FLOORS = [  # lowest first
    ("ground", {"model", "metrics", "utils"}),
    ("step", {"optim"}),
    ("data", {"dataloader", "split", "synthetic", "arena", "catalog", "datasets"}),
    ("runs", {"runs", "wandb_log", "distributed"}),
    ("training", {"training"}),
    ("scoring", {"scoring", "continuation", "baselines", "blend", "recipe"}),
    ("cli", {"evaluate"}),
    ("driver", {"main", "bench", "grid", "reproduce"}),
]
FLOOR = {module: level for level, (_, modules) in enumerate(FLOORS) for module in modules}
ARGPARSE_BUILDERS = {"build_parser", "parse_flags"}
MAX_LINES = 60


def modules():
    return {os.path.basename(path)[:-3]: ast.parse(open(path, encoding="utf-8").read())
            for path in sorted(glob.glob(os.path.join(REPO, "*.py")))}


def own_imports(tree, names):
    """The repository's modules that `tree` imports, anywhere in it."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & names


def test_every_module_has_a_floor():
    assert set(modules()) <= set(FLOOR), f"modules without a floor: {sorted(set(modules()) - set(FLOOR))}"


def test_imports_go_down_or_across_never_up():
    trees = modules()
    upward = [f"{name} ({FLOORS[FLOOR[name]][0]}) imports {other} ({FLOORS[FLOOR[other]][0]})"
              for name, tree in trees.items() for other in own_imports(tree, set(trees)) if FLOOR[other] > FLOOR[name]]
    assert not upward, upward


def test_no_import_circle():
    trees = modules()
    graph = {name: own_imports(tree, set(trees)) - {name} for name, tree in trees.items()}
    state = {}

    def visit(name, path):
        if state.get(name) == "open":
            raise AssertionError("import circle: " + " -> ".join(path[path.index(name):] + [name]))
        if state.get(name) is None:
            state[name] = "open"
            for other in sorted(graph[name]):
                visit(other, path + [name])
            state[name] = "done"

    for name in sorted(graph):
        visit(name, [])


def test_no_function_over_60_lines():
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines" for name, tree in modules().items()
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_LINES and node.name not in ARGPARSE_BUILDERS]
    assert not long, long
