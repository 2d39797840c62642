import pickle

import orjson
import pytest

from stream.errors import ArtifactError
from stream.scoring.artifact import MANIFEST, read_artifact, sha256_bytes, write_artifact


def make(tmp_path, files=None, **manifest):
    files = files or {"model.json": b'{"w": [1, 2]}'}
    base = {"kind": "student", "feature_schema_hash": "abc"}
    return write_artifact(tmp_path / "model", files, base | manifest)


def rewrite_manifest(path, change):
    m = orjson.loads((path / MANIFEST).read_bytes())
    change(m)
    (path / MANIFEST).write_bytes(orjson.dumps(m))


def test_round_trip_records_sha256(tmp_path):
    path = make(tmp_path)
    manifest, files = read_artifact(path, kind="student", feature_schema_hash="abc")
    assert files == {"model.json": b'{"w": [1, 2]}'}
    assert manifest["files"]["model.json"] == sha256_bytes(b'{"w": [1, 2]}')


def test_tampered_file_is_refused(tmp_path):
    path = make(tmp_path)
    (path / "model.json").write_bytes(b'{"w": [1, 3]}')
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        read_artifact(path)


def test_wrong_schema_hash_and_kind_are_refused(tmp_path):
    path = make(tmp_path)
    with pytest.raises(ArtifactError, match="feature schema"):
        read_artifact(path, feature_schema_hash="other")
    with pytest.raises(ArtifactError, match="expected 'teacher'"):
        read_artifact(path, kind="teacher")


@pytest.mark.parametrize("name", ["../evil.json", "/etc/passwd", "sub/x.json", ".hidden", MANIFEST])
def test_path_traversal_in_manifest_is_refused(tmp_path, name):
    path = make(tmp_path)
    rewrite_manifest(path, lambda m: m["files"].update({name: "0" * 64}))
    with pytest.raises(ArtifactError, match="unsafe file name"):
        read_artifact(path)


def test_pickled_content_is_refused_even_with_matching_hash(tmp_path):
    blob = pickle.dumps({"evil": True})
    path = make(tmp_path, files={"model.json": blob})
    with pytest.raises(ArtifactError, match="pickled"):
        read_artifact(path)


def test_symlinked_file_is_refused(tmp_path):
    path = make(tmp_path)
    outside = tmp_path / "outside.json"
    outside.write_bytes(b'{"w": [1, 2]}')
    (path / "model.json").unlink()
    (path / "model.json").symlink_to(outside)
    with pytest.raises(ArtifactError, match="not a regular file"):
        read_artifact(path)


def test_missing_pieces_give_clear_errors(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        read_artifact(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        read_artifact(tmp_path / "empty")
    path = make(tmp_path)
    (path / "model.json").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        read_artifact(path)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_artifact(path)


def test_write_is_atomic_and_replaces_whole(tmp_path):
    make(tmp_path)
    with pytest.raises(ArtifactError):
        write_artifact(tmp_path / "model", {"../x": b"1"}, {"kind": "student"})
    # The failed write left the old artifact intact and no temporary directories behind.
    assert read_artifact(tmp_path / "model")[1] == {"model.json": b'{"w": [1, 2]}'}
    make(tmp_path, files={"other.json": b"{}"})
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [MANIFEST, "other.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
