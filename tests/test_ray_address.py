"""Every command and every test talks to the Ray it started or was told to join. A Ray call given no address
looks for a Ray on this machine by itself: with another one running (another user's, another test session's) it
joins the wrong one or fails ("Found multiple active Ray instances")."""

import ast
import inspect
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("vdp_ray", "tests", "experiments")


def finders() -> set[str]:
    """The calls of Ray's state API and job client that take an address and look for a Ray without one."""
    import ray.util.state as state

    names = {n for n in state.__all__ if "address" in inspect.signature(getattr(state, n)).parameters}
    return names | {"JobSubmissionClient"}


def calls_without_address(source: str, names: set[str]) -> list[str]:
    """``ray.init(...)`` and the calls in ``names`` in ``source`` that pass no address (or None, or "auto"), as
    "LINE: CALL"."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        ray_call = isinstance(func, ast.Attribute) and ast.unparse(func.value) == "ray"
        # ray.get_actor (a named actor of the connected Ray) shares a name with the state API's get_actor
        if not ((ray_call and name == "init") or (name in names and not ray_call)):
            continue
        address = next((k.value for k in node.keywords if k.arg == "address"), None)
        if address is None or (isinstance(address, ast.Constant) and address.value in (None, "auto")):
            found.append(f"{node.lineno}: {ast.unparse(node)[:100]}")
    return found


def test_every_ray_connection_names_its_ray():
    """ray.init, the state API (list_actors, ...) and the job client: each call names the Ray it means ("local"
    for a new one of its own, or an address), in the package, the tests and the benches."""
    names = finders()
    assert {"list_actors", "list_workers", "StateApiClient"} <= names
    paths = [p for folder in SOURCES for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(paths) > 100
    unnamed = [f"{p.relative_to(ROOT)}:{hit}" for p in paths for hit in calls_without_address(p.read_text(), names)]
    assert not unnamed, "\n".join(unnamed)


def test_the_check_sees_a_call_without_an_address():
    """The check itself: a call that looks for its Ray by itself is found, one that names it is not."""
    code = """import ray
from ray.util.state import list_actors
ray.init()
list_actors(limit=5)
ray.init(address="auto")
ray.init(address="local")
list_actors(address=gcs)
ray.get_actor("SERVE_CONTROLLER_ACTOR")
"""
    hits = calls_without_address(code, finders())
    assert [h.split(":")[0] for h in hits] == ["3", "4", "5"]
