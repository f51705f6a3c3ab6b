"""edgeworker uses huey through its public API only (docs/architecture.md lists every name).

huey's private names (a leading underscore) changed between 3.3 and 3.5; the next release may
change them again. So: only the modules that are the seam may import huey, none of them touches
or overrides an underscore attribute, and every huey name they import is documented.
"""

import ast
from pathlib import Path

import huey
import huey_versions
import pytest
from packaging.requirements import Requirement

PACKAGE = Path(__file__).resolve().parent.parent / "edgeworker"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
SEAM = {"queue.py", "consumer.py"}  # where huey is adapted; nothing else imports it


def huey_imports(tree: ast.AST) -> list[tuple[str, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, alias.name) for alias in node.names
                      if alias.name.split(".")[0] == "huey"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "huey":
            found += [(node.module, alias.name) for alias in node.names]
    return found


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def modules():
    return sorted(PACKAGE.glob("*.py"))


def test_only_the_seam_imports_huey():
    importers = {path.name for path in modules() if huey_imports(ast.parse(path.read_text()))}
    assert importers == SEAM


@pytest.mark.parametrize("name", sorted(SEAM))
def test_no_underscore_attribute_of_huey_is_touched_or_overridden(name):
    tree = ast.parse((PACKAGE / name).read_text())
    touched = sorted({node.attr for node in ast.walk(tree)
                      if isinstance(node, ast.Attribute) and private(node.attr)})
    overridden = sorted({node.name for node in ast.walk(tree)
                         if isinstance(node, ast.ClassDef) for node in node.body
                         if isinstance(node, ast.FunctionDef) and private(node.name)})
    imported = sorted(alias for _, alias in huey_imports(tree) if private(alias))
    assert (touched, overridden, imported) == ([], [], [])


def test_the_check_sees_what_it_looks_for():
    tree = ast.parse("from huey.api import Huey\nclass H(Huey):\n    def _execute(self): pass\n"
                     "h = H()\nh._registry = None\n")
    assert [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)] == ["_registry"]
    assert huey_imports(tree) == [("huey.api", "Huey")]


def test_every_huey_name_imported_is_documented():
    text = DOCS.read_text()
    for path in modules():
        for module, name in huey_imports(ast.parse(path.read_text())):
            assert f"`{module}.{name}`" in text, f"{path.name}: {module}.{name}"


def test_the_huey_range_is_closed_and_this_huey_is_in_it():
    """`make test-huey` runs the oldest (the floor) and the newest huey the range allows; an open
    range would let a box install a release nobody ran these tests on."""
    req = huey_versions.requirement()
    assert huey_versions.floor(req)
    assert [s for s in req.specifier if s.operator == "<"], str(req)
    assert req.specifier.contains(huey.__version__), (huey.__version__, str(req))


@pytest.mark.parametrize("spec", ["huey<3.6", "huey>=3.4,>=3.5", "huey==3.5.4"])
def test_a_range_without_one_floor_is_refused(spec):
    with pytest.raises(huey_versions.Error, match="needs one >= floor"):
        huey_versions.floor(Requirement(spec))
