"""The environment mnistlit runs in (`make install`, `pip install mnistlit[serve,export]`) holds what
it needs and nothing that torchmetrics imports merely because it is installed."""

from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# torchmetrics' __init__ imports scipy.signal, and its image metrics torchvision, whenever they are
# installed: 1.0 s and 1.4 s of every command's start-up on a 2-core EPYC (docs/speed.md).
IMPORTED_WHENEVER_INSTALLED = {"torchvision", "scipy"}


def installed_with(name: str, extras: set[str]) -> set[str]:
    """Every distribution that installing ``name[extras]`` brings, by the installed metadata."""
    found: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(name, frozenset(extras))]
    while todo:
        package, wanted = todo.pop()
        if (canonicalize_name(package), wanted) in seen:
            continue
        seen.add((canonicalize_name(package), wanted))
        found.add(canonicalize_name(package))
        try:
            requires = distribution(package).requires or []
        except PackageNotFoundError:  # an optional dependency of a dependency that is not installed
            continue
        for requirement in map(Requirement, requires):
            markers = [{"extra": extra} for extra in wanted or {""}]
            if requirement.marker is None or any(requirement.marker.evaluate(m) for m in markers):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return found


def test_the_runtime_brings_nothing_torchmetrics_imports_on_its_own() -> None:
    runtime = installed_with("mnistlit", {"serve", "export"})
    assert {"torch", "lightning", "torchmetrics", "fastapi", "onnxruntime"} <= runtime
    assert not IMPORTED_WHENEVER_INSTALLED & runtime
    tools = installed_with("mnistlit", {"test", "bench"})
    assert tools >= IMPORTED_WHENEVER_INSTALLED, "the tools' extras have them: the walk sees through extras"
