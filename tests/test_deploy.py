"""docker-compose.yml and the Dockerfile stay consistent with the code (no Docker engine needed)."""

from pathlib import Path

import yaml

from stream.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_kafka_runs_in_kraft_mode_from_the_official_image():
    kafka = compose()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_redis_persists_state_with_aof():
    cmd = compose()["services"]["redis"]["command"]
    assert "--appendonly" in cmd and cmd[cmd.index("--appendonly") + 1] == "yes"
    assert "noeviction" in cmd


def test_workers_scale_by_replicas_and_jobs_exist():
    services = compose()["services"]
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert services["worker"]["command"] == ["worker"]
    assert "txwatch train" in services["trainer"]["command"][0]
    assert "txwatch replay" in services["replayer"]["command"][0]


def test_every_txwatch_variable_is_a_real_setting():
    known = {f"TXWATCH_{name.upper()}" for name in Settings.model_fields}
    used = set()
    for service in compose()["services"].values():
        used |= {k for k in (service.get("environment") or {}) if k.startswith("TXWATCH_")}
    assert used and used <= known, used - known


def test_dockerfile_installs_the_packages_it_copies():
    text = (ROOT / "Dockerfile").read_text()
    for pkg in ("stream", "training", "txwatch", "export", "workbench", "lifecycle"):
        assert f"COPY {pkg} ./{pkg}" in text
    assert 'ENTRYPOINT ["txwatch"]' in text


def test_the_workbench_runs_on_postgresql_with_a_first_admin():
    services = compose()["services"]
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:") and pg.get("healthcheck")
    ui = services["workbench"]
    env = ui["environment"]
    assert env["TXWATCH_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert ui["command"][0] == "ui" and env["TXWATCH_UI_HOST"] == "0.0.0.0"
    assert "postgres" in ui["depends_on"] and "redis" in ui["depends_on"]
    assert services["admin"]["command"][:3] == ["users", "add", "admin"]
