"""``txwatch`` command line: one entry point, one subcommand per job.

Errors a user can cause (bad files, bad models, bad settings) end with a one-line
``txwatch: error: ...`` on stderr and exit status 2; nothing is left half-written.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

import orjson

from stream.errors import TxwatchError
from training.defaults import DEFAULT_LEAF_BUDGET, DEFAULT_NOISE
from training.simulate import DEFAULT_DUPLICATE_FRACTION, DEFAULT_LATE_FRACTION


def _log(quiet: bool) -> Callable[[str], None]:
    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)
    return log


def _print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
    sys.stdout.flush()


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return value


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


# -- commands -----------------------------------------------------------------

def _log_data(log: Callable[[str], None], ds) -> None:
    """One line about the data, with the events the stream would not apply (not trained on)."""
    dropped = ds.meta.get("dropped")
    drops = (f"; dropped as the stream would: {dropped['duplicates']:,} duplicate deliveries, "
             f"{dropped['late']:,} beyond the lateness tolerance") if dropped else ""
    log(f"data: {len(ds.y):,} rows, {len(ds.feature_names)} features, splits {ds.describe()}{drops}")
    reviewed = ds.meta.get("reviewer_labels")
    if reviewed:
        log(f"reviewer labels: {reviewed['records']:,} records, {reviewed['matched']:,} matched, "
            f"{reviewed['changed']:,} changed")


def _monotone(spec: str | None) -> tuple[str, ...] | None:
    from training.monotone import parse

    return None if spec is None else parse(spec)


def cmd_simulate(a: argparse.Namespace) -> int:
    from stream.events.files import write_events
    from training.simulate import deliver, simulate

    log = _log(a.quiet)
    history = simulate(a.events, a.accounts, a.days, a.seed, progress=not a.quiet)
    events = deliver(history, a.seed, late_fraction=a.late_fraction, duplicate_fraction=a.duplicate_fraction)
    n = write_events(a.out, events, progress=not a.quiet)
    pos = sum(1 for e in history if e.get("label") == 1)
    log(f"wrote {n:,} deliveries of {len(history):,} events ({pos:,} labelled anomalous, "
        f"{pos / max(len(history), 1):.2%}; {n - len(history):,} duplicate deliveries) to {a.out}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from training.dataset import load_dataset
    from training.teacher import train_teacher

    log = _log(a.quiet)
    ds = load_dataset(a.events, label=a.label, time=a.time, seed=a.seed, labels=a.labels, progress=not a.quiet)
    _log_data(log, ds)
    params = {"n_estimators": a.trees, "num_leaves": a.leaves, "learning_rate": a.learning_rate,
              "early_stopping_rounds": a.early_stopping, "seed": a.seed, "progress": not a.quiet}
    manifest = train_teacher(ds, a.out, monotone=_monotone(a.monotone), **params)
    if manifest["monotone"]:
        log(f"risk directions held: {', '.join(manifest['monotone'])}")
    log(f"teacher: {manifest['size']['trees']} trees, {manifest['size']['leaves']:,} leaves, "
        f"valid AUPRC {manifest['metrics']['valid_auprc']:.4f} -> {a.out}")
    return 0


def cmd_distill(a: argparse.Namespace) -> int:
    from training.dataset import load_dataset
    from training.distill import distill
    from training.teacher import load_teacher

    log = _log(a.quiet)
    teacher = load_teacher(a.teacher)
    tm = teacher.manifest
    label = a.label or tm["training_data"].get("table", {}).get("label")
    time_col = a.time or tm["training_data"].get("table", {}).get("time")
    ds = load_dataset(a.events, label=label if tm["feature_mode"] == "table" else a.label,
                      time=time_col if tm["feature_mode"] == "table" else a.time, seed=a.seed,
                      feature_names=tuple(tm["feature_names"]) if tm["feature_mode"] == "table" else None,
                      labels=a.labels, progress=not a.quiet)
    if ds.feature_schema_hash != tm["feature_schema_hash"]:
        raise TxwatchError(f"{a.teacher} was trained for another feature schema than {a.events} provides")
    _log_data(log, ds)
    distill(ds, teacher, a.out, family=a.family, temperature=a.temperature,
            augment_factor=a.augment, noise=a.noise, leaf_budget=a.leaf_budget,
            alert_rate=a.alert_rate, precision=a.precision, tree_leaves=a.student_leaves,
            tree_learning_rate=a.student_learning_rate, monotone=_monotone(a.monotone), seed=a.seed, log=log)
    log(f"student -> {a.out}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from training.evaluate import dataset_for, evaluate, evaluate_stress, load_pair, write

    log = _log(a.quiet)
    student, teacher = load_pair(a.model, a.teacher)
    ds = dataset_for(student, a.events, label=a.label, time=a.time, progress=not a.quiet)
    _log_data(log, ds)
    result = evaluate(student, teacher, ds, period=a.period)
    if a.stress:
        from training.stress import summary_line

        log("stress variants: injecting attacks outside the training ranges into real accounts")
        summary = evaluate_stress(student, teacher, result, a.events, seed=a.seed, per_family=a.stress_per_family)
    path = write(result, a.report)
    out = {k: v for k, v in result.items() if k != "_arrays"}
    if a.json:
        _print_json(out)
    else:
        s, t = out["student"], out["teacher"]
        log(f"{out['period']} period: {out['events']:,} events, {out['positives']:,} positives")
        log(f"AUPRC student {s['auprc']:.4f} / teacher {t['auprc']:.4f}; "
            f"precision {s['precision']:.3f} recall {s['recall']:.3f} at threshold {out['threshold']:.4f}; "
            f"spearman {out['agreement']['spearman']:.3f}")
    if a.stress:
        log(summary_line(summary))
    log(f"report: {path}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from export.run import export

    log = _log(a.quiet)
    report = export(a.model, a.format, a.out, events=a.events, label=a.label, time=a.time, log=log)
    if a.json:
        _print_json(report)
    elif a.format == "onnx":
        log(f"onnx: {report['bytes']:,} bytes, onnxruntime within {report['max_abs_diff']:.2g} of txwatch on "
            f"{report['rows_checked']:,} held-out rows -> {a.out}")
    else:
        auc = report["auprc"]
        log(f"fixed: largest probability error {report['max_probability_error']:.2g}, "
            f"{report['alert_decisions_differing']:,} alert decisions differ of {report['rows_checked']:,}; "
            f"AUPRC {auc['fixed']} vs {auc['float']} (float); C source {report['c_source_bytes']:,} bytes -> {a.out}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    if a.target == "models":
        from txwatch.bench.models import bench_models

        _print_json(bench_models(a.events, a.model, teacher_dir=a.teacher, calls=a.calls, log=_log(a.quiet)))
        return 0
    if a.target == "stream":
        from txwatch.bench.stream import bench_stream

        _setup_logging(True)
        _print_json(bench_stream(a.events, a.model, n=a.n, partitions=a.partitions, latency_rate=a.latency_rate,
                                 latency_seconds=a.latency_seconds, monitoring=not a.no_monitoring, rounds=a.rounds,
                                 log=_log(a.quiet)))
        return 0
    if a.target == "export":
        from txwatch.bench.export import bench_export

        _print_json(bench_export(a.model, events=a.events, calls=a.calls, log=_log(a.quiet)))
        return 0
    if a.target == "ui":
        from txwatch.bench.ui import bench_ui

        _setup_logging(True)
        _print_json(bench_ui(cases=a.cases, alerts=a.alerts, database_url=a.database_url, dashboards=a.dashboards,
                             live_rate=a.live_rate, live_seconds=a.live_seconds, requests=a.requests,
                             log=_log(a.quiet)))
        return 0
    if a.target == "soak":
        from txwatch.bench.soak import soak

        _setup_logging(True)
        _print_json(soak(a.events, a.model, seconds=a.seconds, rate=a.rate, peak_events=a.peak_events,
                         warmup_s=a.warmup, partitions=a.partitions, log=_log(a.quiet)))
        return 0
    raise TxwatchError(f"unknown benchmark {a.target!r}")


def _setup_logging(quiet: bool) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("txwatch").setLevel(logging.WARNING if quiet else logging.INFO)
    logging.getLogger("kafka").setLevel(logging.ERROR)  # kafka-python's event-loop timing warnings


def _service_settings(quiet: bool):
    """Settings for a long-running command, with logging set up; DEBUG also turns on the
    libraries' debug logs (TXWATCH_LOG_LEVEL)."""
    import logging

    from stream.settings import load_settings

    _setup_logging(quiet)
    settings = load_settings()
    if settings.log_level == "DEBUG":
        logging.getLogger().setLevel(logging.DEBUG)
        logging.getLogger("kafka").setLevel(logging.DEBUG)
    return settings


def cmd_worker(a: argparse.Namespace) -> int:
    settings = _service_settings(a.quiet)
    if not settings.kafka_url or not settings.redis_url:
        raise TxwatchError("the worker needs TXWATCH_KAFKA_URL and TXWATCH_REDIS_URL (or run `txwatch demo`)")
    if a.runner == "plain":
        from stream.runners.plain import run_plain_worker

        run_plain_worker(settings)
    else:
        from stream.runners.faust_app import run_faust_worker

        run_faust_worker(settings)
    return 0


def cmd_replay(a: argparse.Namespace) -> int:
    from stream.settings import load_settings
    from stream.tools.replay import replay

    settings = load_settings()
    if not settings.kafka_url:
        raise TxwatchError("set TXWATCH_KAFKA_URL to the cluster to publish to")
    result = replay(settings, a.events, a.topic or settings.topics[0], a.rate, limit=a.limit,
                    progress=not a.quiet)
    _print_json(result)
    return 0


def cmd_repartition(a: argparse.Namespace) -> int:
    import asyncio

    from stream.adapters.kafka import ensure_topics
    from stream.tools.repartition import run_repartition

    settings = _service_settings(a.quiet)
    if not settings.kafka_url:
        raise TxwatchError("set TXWATCH_KAFKA_URL")
    target = a.target or settings.topics[0]
    if target == a.source:
        raise TxwatchError("--source and the keyed topic must differ")
    ensure_topics(settings.model_copy(update={"input_topics": target}))
    try:
        asyncio.run(run_repartition(settings, a.source, target))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from txwatch.demo import run_demo

    _setup_logging(True)
    summary = run_demo(events=a.events, accounts=a.accounts, days=a.days, seed=a.seed, workdir=a.workdir,
                       runner=a.runner, rate=a.rate, teacher_trees=a.teacher_trees, keep=a.keep,
                       log=_log(a.quiet))
    if a.json:
        _print_json(summary)
    return 0


def cmd_alerts(a: argparse.Namespace) -> int:
    from stream.adapters.redis_store import redis_store
    from stream.settings import load_settings

    store = redis_store(load_settings())
    rows = []
    for pkey in store.partitions():
        for eid in store.alert_ids(pkey)[-a.limit:]:
            alert = store.alert(pkey, eid)
            if alert:
                rows.append(alert)
    rows.sort(key=lambda r: int(r["ts"]), reverse=True)
    for row in rows[:a.limit]:
        sys.stdout.write(orjson.dumps(row).decode() + "\n")
    return 0


def _model_registry():
    """``(settings, Redis client)`` for the served-model registry; a clear error without Redis."""
    from stream.adapters.redis_store import redis_client
    from stream.settings import load_settings

    settings = load_settings()
    if not settings.redis_url:
        raise TxwatchError("set TXWATCH_REDIS_URL: the served model's pointer and history live in Redis")
    return settings, redis_client(settings)


def cmd_drift(a: argparse.Namespace) -> int:
    from lifecycle.drift import Alarms, run
    from stream.settings import load_settings

    settings = load_settings()
    if not settings.redis_url:
        raise TxwatchError("set TXWATCH_REDIS_URL to the Redis the workers write to")
    alarms = Alarms(feature_psi=a.feature_psi, score_psi=a.score_psi, alert_rate_ratio=a.alert_rate_ratio,
                    min_rows=a.min_rows)
    report, status = run(settings, model_dir=a.model, minutes=a.minutes, alarms=alarms, report_dir=a.report)
    _print_json(report)
    for alarm in report["alarms"]:
        print(f"txwatch: drift: {alarm}", file=sys.stderr)
    return status


def _who() -> str:
    """Who acts from the command line, as the model records name them."""
    import os

    return os.environ.get("USER") or "cli"


def cmd_promote(a: argparse.Namespace) -> int:
    from lifecycle.promote import promote, rollback

    who, why = _who(), a.why or ""
    if a.rollback:
        if a.dir or a.events or a.new_teacher:
            raise TxwatchError("--rollback takes no DIR, --events or --new-teacher")
        settings, client = _model_registry()
        _print_json(rollback(client, settings.redis_prefix, settings.model_dir, who=who, why=why))
        return 0
    if not a.dir or not a.events:
        raise TxwatchError("promote needs DIR and --events FILE (or --rollback)")
    settings, client = _model_registry()
    _print_json(promote(client, settings.redis_prefix, settings.model_dir, a.dir, events_path=a.events, who=who,
                        why=why, tolerance=a.tolerance, new_teacher=a.new_teacher, period=a.period,
                        labels=_labels(a.labels)))
    return 0


def _labels(path: str | None) -> dict[str, int] | None:
    from stream.events.labels import read_labels

    return read_labels(path) if path else None


def cmd_models(a: argparse.Namespace) -> int:
    from lifecycle import registry, shadow
    from lifecycle.promote import status

    settings, client = _model_registry()
    if a.models_command == "status":
        _print_json(status(client, settings.redis_prefix, settings.model_dir, n=a.limit, minutes=a.minutes,
                           labels=_labels(a.labels)))
    elif a.clear:
        if a.dir:
            raise TxwatchError("--clear takes no DIR")
        _print_json({"cleared": shadow.clear_challenger(client, settings.redis_prefix)})
    else:
        if not a.dir:
            raise TxwatchError("models challenger needs DIR (or --clear)")
        served = registry.current(client, settings.redis_prefix, settings.model_dir)
        _print_json(shadow.set_challenger(client, settings.redis_prefix, served, a.dir,
                                          who=_who(), why=a.why or ""))
    return 0


def cmd_retrain(a: argparse.Namespace) -> int:
    from lifecycle import registry, shadow
    from lifecycle.retrain import retrain
    from stream.settings import load_settings

    install = None
    if a.no_install:
        served = load_settings().model_dir
    else:
        settings, client = _model_registry()
        served = registry.current(client, settings.redis_prefix, settings.model_dir)  # Redis checked before training

        def install(student_dir: str) -> dict:
            return shadow.set_challenger(client, settings.redis_prefix, served, student_dir,
                                         who=_who(), why=a.why or "txwatch retrain")
    params = {"n_estimators": a.trees, "num_leaves": a.leaves, "learning_rate": a.learning_rate,
              "early_stopping_rounds": a.early_stopping}
    _print_json(retrain(a.events, a.labels, a.out, served_dir=served, teacher_params=params,
                        leaf_budget=a.leaf_budget, seed=a.seed, install=install, log=_log(a.quiet),
                        progress=not a.quiet))
    return 0


def cmd_fidelity(a: argparse.Namespace) -> int:
    import signal

    from lifecycle.fidelity import run
    from stream.adapters.redis_store import redis_store

    settings, client = _model_registry()
    stop = {"now": False}

    def on_signal(signum, frame) -> None:
        stop["now"] = True

    if not a.once:
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def emit(window: dict) -> None:
        if not a.once:  # JSON Lines: one closed window per line
            sys.stdout.write(orjson.dumps(window, option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
            sys.stdout.flush()
        for alarm in window["alarms"]:
            print(f"txwatch: fidelity: {window['model_version']}: {alarm}", file=sys.stderr)

    report = run(redis_store(settings, client), client, settings.redis_prefix, settings.model_dir, once=a.once,
                 from_start=a.from_start, window_s=a.window_s, tolerance=a.tolerance, min_rows=a.min_rows,
                 emit=emit, should_stop=lambda: stop["now"])
    if a.once:
        _print_json(report)
    return 1 if report["alarms"] else 0


# -- parser -------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="txwatch", description=__doc__.splitlines()[0])
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or log lines on stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simulate", help="write a labelled, simulated exchange history")
    s.add_argument("--events", type=_positive_int, default=200_000, help="about how many events (default 200000)")
    s.add_argument("--accounts", type=_positive_int, default=2_000, help="accounts (default 2000)")
    s.add_argument("--days", type=float, default=30.0, help="days of history (default 30)")
    s.add_argument("--seed", type=int, default=0, help="random seed; same seed, same file (default 0)")
    s.add_argument("--out", required=True, help="output path: .jsonl or .parquet")
    s.add_argument("--late-fraction", type=_unit_interval, default=DEFAULT_LATE_FRACTION,
                   help=f"share of events delivered late, out of event-time order (default {DEFAULT_LATE_FRACTION})")
    s.add_argument("--duplicate-fraction", type=_unit_interval, default=DEFAULT_DUPLICATE_FRACTION,
                   help=f"share of events delivered twice (default {DEFAULT_DUPLICATE_FRACTION})")
    s.set_defaults(func=cmd_simulate)

    def data_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--events", required=True, help="events (.jsonl/.parquet) or, with --label, a feature table (.csv/.parquet)")
        sp.add_argument("--label", help="tabular mode: name of the 0/1 label column")
        sp.add_argument("--time", help="tabular mode: time column for a time-based split (else stratified random)")
        sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        sp.add_argument("--labels", metavar="FILE", help="events mode: reviewers' labels (JSON Lines of label records) "
                        "that override the events' own labels by event_id (docs/models.md)")

    t = sub.add_parser("train", help="train the LightGBM teacher")
    data_args(t)
    t.add_argument("--out", required=True, help="teacher artifact directory")
    t.add_argument("--trees", type=_positive_int, default=1500, help="maximum trees (default 1500)")
    t.add_argument("--leaves", type=_positive_int, default=63, help="leaves per tree (default 63)")
    t.add_argument("--learning-rate", type=float, default=0.03, help="(default 0.03)")
    t.add_argument("--early-stopping", type=_positive_int, default=200, help="rounds without validation gain (default 200)")
    t.add_argument("--monotone", help="features held to their risk direction: default, none, all or a comma list "
                   "(default: 'default' for events, none for a table; docs/models.md)")
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("distill", help="distil the teacher into a compact student")
    data_args(d)
    d.add_argument("--teacher", required=True, help="teacher artifact directory")
    d.add_argument("--out", required=True, help="student artifact directory")
    d.add_argument("--family", choices=("trees", "linear"), help="force a student family (default: best on validation)")
    d.add_argument("--temperature", type=float, default=10.0, help="soft-target temperature (default 10)")
    d.add_argument("--augment", type=float, default=1.0, help="augmented rows per training row (default 1)")
    d.add_argument("--noise", type=float, default=DEFAULT_NOISE,
                   help=f"augmentation noise, in feature std units (default {DEFAULT_NOISE:g})")
    d.add_argument("--leaf-budget", type=_fraction, default=DEFAULT_LEAF_BUDGET,
                   help=f"student leaves as a fraction of the teacher's (default {DEFAULT_LEAF_BUDGET:g})")
    d.add_argument("--student-leaves", type=_positive_int, help="leaves per student tree (default 7)")
    d.add_argument("--student-learning-rate", type=float, help="student learning rate (default 0.3)")
    d.add_argument("--monotone", help="features held to their risk direction (default: the teacher's)")
    target = d.add_mutually_exclusive_group()
    target.add_argument("--alert-rate", type=_fraction, default=0.01, help="alert threshold target: fraction of events alerted (default 0.01)")
    target.add_argument("--precision", type=_fraction, help="alert threshold target: validation precision instead")
    d.set_defaults(func=cmd_distill)

    e = sub.add_parser("evaluate", help="evaluate student and teacher; write a report")
    e.add_argument("--model", required=True, help="student artifact directory")
    e.add_argument("--teacher", help="teacher directory (default: the one recorded in the student)")
    e.add_argument("--events", required=True, help="events or table to evaluate on")
    e.add_argument("--label", help="tabular mode: label column (default: the model's)")
    e.add_argument("--time", help="tabular mode: time column")
    e.add_argument("--period", default="test", choices=("test", "valid", "train", "all"), help="rows to evaluate (default test)")
    e.add_argument("--report", required=True, help="report directory (report.md, metrics.json, PNG plots)")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    e.add_argument("--stress", action="store_true",
                   help="also inject attack variants outside the training ranges into real accounts and report recall per family")
    e.add_argument("--stress-per-family", type=_positive_int, help="variant instances per family (default 60)")
    e.add_argument("--seed", type=int, default=0, help="seed of the stress variants (default 0)")
    e.set_defaults(func=cmd_evaluate)

    w = sub.add_parser("worker", help="score Kafka events and write alerts to Redis (settings: TXWATCH_* env)")
    w.add_argument("--runner", choices=("faust", "plain"), default="faust",
                   help="faust agent (default) or the plain aiokafka loop over the same core")
    w.set_defaults(func=cmd_worker)

    r = sub.add_parser("replay", help="publish an events file to Kafka, keyed by account_id")
    r.add_argument("--events", required=True, help="events file (.jsonl or .parquet)")
    r.add_argument("--topic", help="topic (default: the first of TXWATCH_INPUT_TOPICS)")
    r.add_argument("--rate", type=float, default=0.0, help="events per second; 0 = as fast as possible (default)")
    r.add_argument("--limit", type=_positive_int, help="stop after this many events")
    r.set_defaults(func=cmd_replay)

    rp = sub.add_parser("repartition", help="re-key a topic by account_id for the workers (TXWATCH_* env)")
    rp.add_argument("--source", required=True, help="topic whose records are not keyed by account_id")
    rp.add_argument("--target", help="keyed topic (default: the first of TXWATCH_INPUT_TOPICS)")
    rp.set_defaults(func=cmd_repartition)

    dm = sub.add_parser("demo", help="everything end to end on embedded Kafka and Redis (or the configured ones)")
    dm.add_argument("--events", type=_positive_int, default=150_000, help="simulated events over all days (default 150000)")
    dm.add_argument("--accounts", type=_positive_int, default=1_500, help="accounts (default 1500)")
    dm.add_argument("--days", type=_positive_int, default=14, help="days of history before the fresh day (default 14)")
    dm.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    dm.add_argument("--workdir", default="runs/demo", help="where data, models and the worker log go (default runs/demo)")
    dm.add_argument("--runner", choices=("faust", "plain"), default="faust", help="worker runner (default faust)")
    dm.add_argument("--rate", type=float, default=0.0, help="fresh-day replay rate in events/s; 0 = as fast as possible")
    dm.add_argument("--teacher-trees", type=_positive_int, default=800, help="teacher tree cap (default 800)")
    dm.add_argument("--keep", action="store_true", help="keep the servers running after the summary until Ctrl-C")
    dm.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    dm.set_defaults(func=cmd_demo)

    al = sub.add_parser("alerts", help="newest alerts from Redis as JSON lines (TXWATCH_REDIS_URL)")
    al.add_argument("--limit", type=_positive_int, default=20, help="how many (default 20)")
    al.set_defaults(func=cmd_alerts)

    dr = sub.add_parser("drift", help="the served model's drift against its reference profile (JSON; exit 1 on an alarm)")
    dr.add_argument("--model", help="model directory (default: the one the workers serve)")
    dr.add_argument("--minutes", type=_positive_float, default=60.0, help="how far back to sum windows (default 60)")
    dr.add_argument("--feature-psi", type=_positive_float, default=0.25, help="alarm past this PSI on a feature (default 0.25)")
    dr.add_argument("--score-psi", type=_positive_float, default=0.25, help="alarm past this PSI on the score (default 0.25)")
    dr.add_argument("--alert-rate-ratio", type=_positive_float, default=2.0,
                    help="alarm when the alert rate is more than this many times the reference, or under 1/this (default 2)")
    dr.add_argument("--min-rows", type=int, default=1000, help="no alarm on fewer scored events (default 1000)")
    dr.add_argument("--report", help="also write report.md with PNG plots to this directory")
    dr.set_defaults(func=cmd_drift)

    pr = sub.add_parser("promote", help="gate a student and serve it (Redis pointer + history), or --rollback")
    pr.add_argument("dir", nargs="?", metavar="DIR", help="candidate student artifact directory")
    pr.add_argument("--events", help="recent events; the period's rows measure fidelity to the teacher")
    pr.add_argument("--why", help="reason, kept in the history record")
    pr.add_argument("--tolerance", type=_non_negative_float, default=0.05,
                    help="how far live fidelity may fall below the profile's (default 0.05)")
    pr.add_argument("--new-teacher", action="store_true", help="the candidate's teacher may differ from the served one's")
    pr.add_argument("--period", default="test", choices=("test", "valid", "train", "all"),
                    help="rows of --events to measure on (default test: the latest days)")
    pr.add_argument("--rollback", action="store_true", help="serve again the model the newest promotion replaced")
    pr.add_argument("--labels", help="reviewers' labels file (txwatch labels export): the shadow check judges "
                    "precision on them")
    pr.set_defaults(func=cmd_promote)

    mo = sub.add_parser("models", help="the served model, the shadow challenger and the history (TXWATCH_REDIS_URL)")
    mosub = mo.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    ms = mosub.add_parser("status", help="champion and challenger with their live figures, newest history records, "
                          "as JSON")
    ms.add_argument("--limit", type=_positive_int, default=10, help="history records (default 10)")
    ms.add_argument("--minutes", type=_positive_float, default=1440.0,
                    help="how far back to sum the shadow windows (default 1440: a day)")
    ms.add_argument("--labels", help="reviewers' labels file (txwatch labels export): each model's precision")
    mc = mosub.add_parser("challenger", help="run a student as shadow challenger beside the served model, or --clear")
    mc.add_argument("dir", nargs="?", metavar="DIR", help="student artifact directory")
    mc.add_argument("--why", help="reason, kept with the challenger record")
    mc.add_argument("--clear", action="store_true", help="stop shadowing")
    mo.set_defaults(func=cmd_models)

    rt = sub.add_parser("retrain", help="teacher and student from history plus reviewers' labels, evaluated, "
                        "installed as shadow challenger (never served directly)")
    rt.add_argument("--events", required=True, help="the history (.jsonl/.parquet)")
    rt.add_argument("--labels", required=True, help="reviewers' labels file (txwatch labels export)")
    rt.add_argument("--out", required=True, help="directory for teacher/, student/ and evaluation/")
    rt.add_argument("--trees", type=_positive_int, default=1500, help="teacher: maximum trees (default 1500)")
    rt.add_argument("--leaves", type=_positive_int, default=63, help="teacher: leaves per tree (default 63)")
    rt.add_argument("--learning-rate", type=float, default=0.03, help="teacher (default 0.03)")
    rt.add_argument("--early-stopping", type=_positive_int, default=200, help="teacher: rounds without validation "
                    "gain (default 200)")
    rt.add_argument("--leaf-budget", type=_fraction, default=DEFAULT_LEAF_BUDGET,
                    help=f"student: leaves as a share of the teacher's (default {DEFAULT_LEAF_BUDGET:g})")
    rt.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    rt.add_argument("--why", help="reason, kept with the challenger record")
    rt.add_argument("--no-install", action="store_true", help="only write and evaluate the artifacts")
    rt.set_defaults(func=cmd_retrain)

    fi = sub.add_parser("fidelity", help="score the workers' fidelity sample with the teachers, per window (JSON; "
                        "exit 1 on an alarm)")
    fi.add_argument("--once", action="store_true", help="read what is there, report, and stop (default: follow)")
    fi.add_argument("--from-start", action="store_true", help="read from the oldest sample kept, not the cursor")
    fi.add_argument("--window-s", type=_positive_float, default=300.0, help="window length in seconds (default 300)")
    fi.add_argument("--tolerance", type=_non_negative_float, default=0.05,
                    help="how far live fidelity may fall below the profile's (default 0.05)")
    fi.add_argument("--min-rows", type=_positive_int, default=500, help="no alarm on fewer sampled rows (default 500)")
    fi.set_defaults(func=cmd_fidelity)

    ex = sub.add_parser("export", help="the student as ONNX or as an integer-only model with a C evaluator, verified")
    ex.add_argument("--model", required=True, help="student artifact directory")
    ex.add_argument("--format", required=True, choices=("onnx", "fixed"),
                    help="onnx: one .onnx file; fixed: a directory (fixed_model.json, txwatch_student.c)")
    ex.add_argument("--out", required=True, help="output file (onnx) or directory (fixed); written only once verified")
    ex.add_argument("--events", help="data to verify on (default: what the model was trained on, from its manifest)")
    ex.add_argument("--label", help="tabular model: the label column of --events")
    ex.add_argument("--time", help="tabular model: the time column of --events")
    ex.add_argument("--json", action="store_true", help="print the verification report as JSON")
    ex.set_defaults(func=cmd_export)

    from workbench.commands import add_parsers as workbench_parsers

    workbench_parsers(sub)

    b = sub.add_parser("bench", help="benchmarks that print one JSON object")
    bsub = b.add_subparsers(dest="target", required=True, metavar="TARGET")
    bm = bsub.add_parser("models", help="teacher vs student: latency, throughput, size, AUPRC")
    bm.add_argument("--events", required=True, help="events file (its test period is scored)")
    bm.add_argument("--model", required=True, help="student artifact directory")
    bm.add_argument("--teacher", help="teacher directory (default: recorded in the student)")
    bm.add_argument("--calls", type=_positive_int, default=10_000, help="single-event calls to time (default 10000)")
    bs = bsub.add_parser("stream", help="worker throughput, faust/transport ceilings, latency, RSS, scale-out")
    bs.add_argument("--events", required=True, help="events file to publish (.jsonl or .parquet)")
    bs.add_argument("--model", required=True, help="student artifact directory")
    bs.add_argument("--n", type=_positive_int, default=200_000, help="events per throughput phase (default 200000)")
    bs.add_argument("--partitions", type=_positive_int, default=4, help="partitions of the bench topic (default 4)")
    bs.add_argument("--latency-rate", type=float, default=2000.0, help="offered events/s in the latency phase (default 2000)")
    bs.add_argument("--latency-seconds", type=float, default=30.0, help="length of the latency phase (default 30)")
    bs.add_argument("--rounds", type=_positive_int, default=2, help="runs of the bare drain and the cores, of the "
                    "no-op faust agents and the faust worker, and of the three latency phases, each group in turns; "
                    "the best of each is compared (default 2)")
    bs.add_argument("--no-monitoring", action="store_true", help="every worker phase without drift, fidelity sample "
                    "and shadow challenger (default: all three on, as in production)")
    be = bsub.add_parser("export", help="the exported student (ONNX, integer form) against txwatch's kernels")
    be.add_argument("--model", required=True, help="student artifact directory")
    be.add_argument("--events", help="events file to take held-out rows from (default: the one the model records)")
    be.add_argument("--calls", type=_positive_int, default=10_000, help="single-event calls to time (default 10000)")
    bk = bsub.add_parser("soak", help="sustained load at half the measured peak: RSS growth, lag, stalls")
    bk.add_argument("--events", required=True, help="events file (replayed in loops with fresh ids and times)")
    bk.add_argument("--model", required=True, help="student artifact directory")
    bk.add_argument("--seconds", type=_positive_float, default=300.0, help="length of the soak (default 300)")
    bk.add_argument("--rate", type=_positive_float, help="offered events/s (default: half the measured peak)")
    bk.add_argument("--peak-events", type=_positive_int, default=60_000, help="events in the peak phase (default 60000)")
    bk.add_argument("--warmup", type=_positive_float, default=60.0, help="seconds before RSS growth is measured (default 60)")
    bk.add_argument("--partitions", type=_positive_int, default=4, help="partitions of the soak topic (default 4)")
    bu = bsub.add_parser("ui", help="the workbench: queue and API latency on a filled database, live-alert delay")
    bu.add_argument("--cases", type=_positive_int, default=100_000, help="cases (default 100000)")
    bu.add_argument("--alerts", type=_positive_int, default=1_000_000, help="alerts over all cases (default 1000000)")
    bu.add_argument("--database-url", help="database to fill (default: a fresh SQLite file); must be empty")
    bu.add_argument("--dashboards", type=_positive_int, default=50, help="live dashboards connected (default 50)")
    bu.add_argument("--live-rate", type=_positive_float, default=20.0, help="alerts/s committed in the live phase (default 20)")
    bu.add_argument("--live-seconds", type=_positive_float, default=15.0, help="length of the live phase (default 15)")
    bu.add_argument("--requests", type=_positive_int, default=200, help="requests per timed endpoint (default 200)")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``txwatch`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (TxwatchError, OSError) as exc:  # OSError: a path that cannot be read or written, not a bug
        print(f"txwatch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("txwatch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
