"""The architecture as a rule: the core (the example people copy) imports nothing else from
mnistlit and no library but torch, Lightning, torchmetrics and numpy; deployment never imports
the run machinery; only the command line knows the search."""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "mnistlit"


CORE_LIBRARIES = {"torch", "lightning", "torchmetrics", "numpy"}


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), wherever in the file the import stands."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import of {node.module}"
            names.add(node.module)
    return names


def test_the_core_imports_only_itself_and_its_four_libraries() -> None:
    for path in (PACKAGE / "core").glob("*.py"):
        for name in imports_of(path):
            top = name.split(".")[0]
            if top == "mnistlit":
                assert name.startswith("mnistlit.core"), f"{path.name} imports {name}"
            else:
                assert top in CORE_LIBRARIES | sys.stdlib_module_names, f"{path.name} imports {name}"


def test_deployment_never_imports_the_run_machinery() -> None:
    for path in (PACKAGE / "deploy").glob("*.py"):
        crossing = {name for name in imports_of(path) if name.startswith("mnistlit.runs")}
        assert not crossing, f"{path.name} imports {crossing}"


def test_only_the_command_line_knows_the_search() -> None:
    """A search is built from fits; the parts of a fit never depend on it, nor on Optuna."""
    for path in [
        *PACKAGE.glob("*.py"),
        *(p for group in ("core", "runs", "deploy") for p in PACKAGE.glob(f"{group}/*.py")),
    ]:
        crossing = {name for name in imports_of(path) if name.startswith(("mnistlit.search", "optuna"))}
        allowed = {"mnistlit.search.command"} if path.name == "__main__.py" else set()
        assert crossing <= allowed, f"{path.relative_to(PACKAGE)} imports {crossing - allowed}"


def test_the_core_reads_in_one_sitting() -> None:
    lines = sum(len(path.read_text().splitlines()) for path in (PACKAGE / "core").glob("*.py"))
    assert lines <= 1000, f"the core has {lines} lines"


def test_the_rule_sees_a_crossing_import(tmp_path: Path) -> None:
    path = tmp_path / "module.py"
    path.write_text("def f():\n    from mnistlit.runs import folders\n")
    assert imports_of(path) == {"mnistlit.runs"}
