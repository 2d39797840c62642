"""Model artifact directories: a manifest plus text files, each pinned by sha256.

An artifact is a directory holding ``manifest.json`` and the files it lists. Writing is
atomic (a temporary sibling directory renamed into place). Loading verifies every listed
file's sha256, refuses file names that could escape the directory, refuses pickled
content, and (for callers that pass it) refuses a feature-schema hash that differs from
the running code's. Nothing here ever unpickles.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from stream.atomic import write_dir
from stream.errors import ArtifactError

MANIFEST = "manifest.json"
FORMAT = "txwatch-model/1"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_PICKLE_PREFIXES = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (seconds)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def version_stamp(created_at: str) -> str:
    """``2026-11-24T21:25:50+00:00`` -> ``20261124T212550`` (for model versions)."""
    return created_at.replace(":", "").replace("-", "")[:15]


def write_artifact(out_dir: str | os.PathLike, files: dict[str, bytes], manifest: dict[str, Any]) -> Path:
    """Write ``files`` and a manifest (with their sha256) to ``out_dir`` atomically.

    An existing ``out_dir`` is replaced only once the new one is complete.
    """
    out = Path(out_dir)
    for name in files:
        if not _SAFE_NAME.match(name) or name == MANIFEST:
            raise ArtifactError(f"unsafe artifact file name {name!r}")
    full = dict(manifest)
    full["format"] = FORMAT
    full["files"] = {name: sha256_bytes(data) for name, data in files.items()}
    manifest_bytes = orjson.dumps(full, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    return write_dir(out, {**files, MANIFEST: manifest_bytes})


def read_artifact(
    path: str | os.PathLike, *, kind: str | None = None, feature_schema_hash: str | None = None
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Load and verify an artifact; return ``(manifest, {file name: bytes})``.

    Raises ``ArtifactError`` with a one-line reason for anything that does not check out.
    """
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"model directory {str(root)!r} does not exist")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{str(root)!r} has no {MANIFEST}; not a txwatch model directory")
    try:
        manifest = orjson.loads(mpath.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ArtifactError(f"{mpath}: manifest is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mpath}: not a {FORMAT} manifest")
    if kind is not None and manifest.get("kind") != kind:
        raise ArtifactError(f"{str(root)!r} holds a {manifest.get('kind')!r} model, expected {kind!r}")
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        raise ArtifactError(f"{mpath}: manifest lists no files")
    files: dict[str, bytes] = {}
    for name, digest in listed.items():
        if not isinstance(name, str) or not _SAFE_NAME.match(name) or name == MANIFEST:
            raise ArtifactError(f"{mpath}: refusing unsafe file name {name!r} (path traversal?)")
        fpath = root / name
        if fpath.is_symlink() or not fpath.is_file():
            raise ArtifactError(f"{str(root)!r}: listed file {name!r} is missing or not a regular file")
        data = fpath.read_bytes()
        if data.startswith(_PICKLE_PREFIXES):
            raise ArtifactError(f"{fpath}: refusing pickled content")
        if sha256_bytes(data) != digest:
            raise ArtifactError(f"{fpath}: sha256 mismatch; the file was modified after training")
        files[name] = data
    if feature_schema_hash is not None and manifest.get("feature_schema_hash") != feature_schema_hash:
        raise ArtifactError(
            f"{str(root)!r} was built for feature schema {str(manifest.get('feature_schema_hash'))[:12]}, "
            f"this txwatch computes {feature_schema_hash[:12]}; retrain or use a matching model"
        )
    return manifest, files
