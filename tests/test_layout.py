"""The layout's rules hold: the core owns its ports and imports no client library, the
runtime never imports training or the benchmarks, and each format has one definition."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ("redis", "kafka", "aiokafka", "faust")


def _imported_after(code: str) -> set[str]:
    """Top-level module names loaded by running ``code`` in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {name.split(".")[0] for name in out.split()}


def test_the_core_features_and_formats_import_no_client_library():
    loaded = _imported_after("import stream.core.pipeline, stream.core.worker, stream.features.admission, "
                             "stream.events.files, stream.events.alerts, stream.events.deadletters")
    assert not loaded & set(CLIENTS), loaded & set(CLIENTS)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_stream_never_imports_training_export_workbench_lifecycle_or_txwatch():
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p)
                                                  if n.split(".")[0] in ("training", "txwatch", "export", "workbench", "lifecycle"))
                 for p in (ROOT / "stream").rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_workbench_stays_beside_the_pipeline():
    """training never imports the workbench; the workbench never imports training, the CLI or
    the benchmarks; its pure parts (ratings, reasons in words) load no client library."""
    assert not [str(p) for p in (ROOT / "training").rglob("*.py") if any(n.startswith("workbench") for n in _imports(p))]
    bad = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.split(".")[0] in ("training", "txwatch"))
           for p in (ROOT / "workbench").rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}
    loaded = _imported_after("import workbench.risk, workbench.explain")
    assert not loaded & {*CLIENTS, "sqlalchemy", "fastapi"}, loaded & {*CLIENTS, "sqlalchemy", "fastapi"}


def test_no_client_library_in_the_core_or_the_formats():
    for package in ("core", "events", "features", "scoring"):
        for p in (ROOT / "stream" / package).rglob("*.py"):
            bad = [n for n in _imports(p) if n.split(".")[0] in CLIENTS]
            assert not bad, (p, bad)


def test_only_the_cli_reaches_the_benchmarks():
    users = [str(p.relative_to(ROOT)) for base in ("stream", "training", "txwatch", "export", "workbench", "lifecycle")
             for p in (ROOT / base).rglob("*.py")
             if "bench" not in p.parts and any(n.startswith("txwatch.bench") for n in _imports(p))]
    assert users == ["txwatch/cli.py"], users


def test_the_commit_script_names_the_alert_codecs_fields():
    from stream.adapters.redis_store import _COMMIT_LUA
    from stream.events.alerts import HASH_FIELDS

    assert _COMMIT_LUA.startswith("local FIELDS = {" + ", ".join(f"'{f}'" for f in HASH_FIELDS) + "}")
    assert "'status'" not in _COMMIT_LUA.split("\n", 1)[1]  # no field named anywhere else in it
