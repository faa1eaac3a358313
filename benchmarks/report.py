"""``docs/benchmarks.md``, written from one run's figures.

No ```python fences: every such block in docs/*.md runs as a test.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from .common import ROOT, WORKER_OPTIONS, Broker

if TYPE_CHECKING:
    from .bench_log import Breakdown, LogResult
    from .bench_process import ProcessResult
    from .bench_throughput import ThroughputResult, WorkerBreakdown

LOG_TARGET = 1.10
THROUGHPUT_TARGET = 0.9


@dataclass
class Report:
    command: str
    quick: bool
    facts: dict[str, str]
    brokers: list[Broker] = field(default_factory=list)
    log: list[LogResult] = field(default_factory=list)
    breakdown: Breakdown | None = None
    throughput: list[ThroughputResult] = field(default_factory=list)
    worker_breakdown: WorkerBreakdown | None = None
    process: ProcessResult | None = None
    aborted: str | None = None
    seconds: float = 0.0
    load_at_end: str = ""


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _git() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not commit:
        return "unknown"
    return f"{commit}, with uncommitted changes" if dirty else commit


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo").read().splitlines():  # noqa: SIM115
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def machine_facts() -> dict[str, str]:
    load = load_average()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": f"{_cpu_model()}, {os.cpu_count()} logical CPUs",
        "load average (1, 5, 15 min) at start": load,
        "OS": platform.platform(),
        "Python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "celery / kombu": f"{_version('celery')} / {_version('kombu')}",
        "redis-py / py-amqp / SQLAlchemy": (
            f"{_version('redis')} / {_version('amqp')} / {_version('sqlalchemy')}"
        ),
        "blinker": _version("blinker"),
        "eventlib": f"{_version('eventlib')} (git {_git()})",
    }


def _us(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"


def _pct(value: float) -> str:
    return f"{value * 100:+.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render(report: Report) -> str:
    out: list[str] = [
        "# Benchmarks",
        "",
        "Measured, never asserted: no test depends on these figures.  This page is",
        "rewritten by every run of the benchmarks in `benchmarks/`, which run side by",
        "side in one run, on the same brokers and the same payload:",
        "",
        "```sh",
        report.command,
        "```",
        "",
        "(`make bench` runs `.venv/bin/python -m benchmarks.run`; add `--quick` for a",
        "smoke run with small counts, `--brokers redis,embedded` to choose brokers.",
        "It then runs `benchmarks.embedded_transports` and `benchmarks.spooling`, which",
        "write their own sections at the end of this page.)",
        "",
    ]
    if report.quick:
        out += ["**This is a `--quick` run: counts are too small to be read as results.**", ""]
    if report.aborted:
        out += [f"**The run was aborted: {report.aborted}**", ""]
    out += [f"It took {report.seconds:.0f} seconds.", ""]
    out += _summary(report)
    out += ["## Machine", ""]
    facts = {}
    for key, value in report.facts.items():
        facts[key] = value
        if key.startswith("load average"):
            facts["load average (1, 5, 15 min) at the end"] = report.load_at_end
    out += _table(["", ""], [[key, value] for key, value in facts.items()])
    out += [
        "",
        "The brokers run on the same machine as the benchmarks, so publishing is",
        "cheap (no network) and the worker, its pool and the broker share the CPUs",
        "above.  Other programs may have been running too: compare ratios, which",
        "come from interleaved measurements, rather than absolute figures.",
        "",
        "## Brokers",
        "",
    ]
    out += _table(
        ["broker", "URL", "server", "status"],
        [
            [
                b.label,
                f"`{b.shown_url}`",
                b.version or "n/a",
                f"skipped: {b.skipped}" if b.skipped else "measured",
            ]
            for b in report.brokers
        ],
    )
    out += [""]
    out += _log_section(report)
    out += _throughput_section(report)
    out += _process_section(report)
    out += _reading(report)
    return "\n".join(out).rstrip() + "\n"


def _summary(report: Report) -> list[str]:
    rows = []
    for result in report.log:
        s = result.summaries
        ratio = result.ratio("median")
        gross = (s["log"].median - s["apply_async"].median) / s["delay"].median
        rows.append(
            [
                "1. `log()` / `delay()`, median per call",
                result.broker.label,
                f"{_ratio(ratio)} (gross: {1 + gross:.3f})",
                f"<= {LOG_TARGET:.2f}",
                _verdict(max(ratio, 1 + gross) <= LOG_TARGET),
            ]
        )
    for result in report.throughput:
        if not result.complete:
            rows.append(["2. worker events/s, eventlib / bare", result.broker.label] + ["n/a"] * 3)
            continue
        rows.append(
            [
                "2. worker events/s, eventlib / bare",
                result.broker.label,
                f"{_ratio(result.ratio)} (CPU: {_ratio(result.cpu_ratio)})",
                f">= {THROUGHPUT_TARGET}",
                _verdict(result.ratio >= THROUGHPUT_TARGET),
            ]
        )
    p = report.process
    if p is not None:
        rows.append(
            [
                "3. `process()`'s handler loop / blinker `send()`",
                "none",
                f"{p.loop / p.median('blinker'):.2f} ({_us(p.loop)} / "
                f"{_us(p.median('blinker'))} µs)",
                "none",
                "",
            ]
        )
    if not rows:
        return []
    out = ["## Summary", ""]
    out += _table(["measure", "broker", "ratio", "target", "target met"], rows)
    skipped = [f"{b.label} was skipped: {b.skipped}." for b in report.brokers if b.skipped]
    out += ["", *skipped, *([""] if skipped else [])]
    out += [
        '"Gross" counts eventlib\'s own work in `log()` without what it saves inside',
        "Celery (see section 1).  The CPU ratio is the bare worker's CPU time per",
        "message over eventlib's, steadier than wall-clock rates on a busy machine.",
        "",
    ]
    return out


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


# ------------------------------------------------------------------ 1 ---


def _log_section(report: Report) -> list[str]:
    out = [
        "## 1. `eventlib.log()` against Celery's `delay()`",
        "",
        "Per call, in the caller, in microseconds.  Both sides use the same Celery",
        "app, eventlib's own (`eventlib.dispatch.celery_app()` after",
        "`eventlib.configure(broker_url=..., queue=<unique queue>, apps=[...])`), and",
        "send to a queue of their own on the same broker.  The calls are timed one by",
        "one, in rounds that interleave them (their order rotates from round to",
        "round), after a warm-up; the queues are deleted afterwards.",
        "",
        "- **`log()`**: `eventlib.log('benchmarks.benchapp.Order', data)` with five",
        "  keys, a `Decimal` and a timezone-aware `datetime` among them.  It includes",
        "  finding the event class, building the event (a copy of the data, a",
        "  `uuid4()`, `datetime.now()`), running its `clean()` (`require_data_keys`),",
        "  eventlib's own JSON serialization with tagged values, and Celery's",
        "  `apply_async()` of `eventlib.process` with that JSON text as an argument.",
        "- **`delay()`** (the baseline): `bare.delay(data)`, a no-op task registered on",
        "  the same app, with the same five values already JSON-able (the decimal and",
        "  the date as strings).  It includes Celery's own work (task id, routing,",
        "  message and its JSON body, kombu's publish) and excludes validation and",
        "  the handling of non-JSON types.",
        "- **`apply_async()` alone**: eventlib's exact Celery call (`task_id=`,",
        "  `queue=`) with a payload serialized beforehand: `log()` without eventlib's",
        "  own work.  It splits the difference between the two into eventlib's work",
        "  (`log` - `apply_async`) and the cost of its way of calling Celery",
        "  (`apply_async` - `delay`).",
        "",
    ]
    if not report.log:
        return [*out, "No broker could be measured.", ""]
    rows = []
    for result in report.log:
        log, delay = result.summaries["log"], result.summaries["delay"]
        ratio = result.ratio("median")
        rows.append(
            [
                result.broker.label,
                f"{log.calls:,}",
                _us(log.median),
                _us(log.p99),
                _us(delay.median),
                _us(delay.p99),
                f"**{_ratio(ratio)}**",
                _ratio(result.ratio("p99")),
                f"{min(result.round_ratios):.3f} - {max(result.round_ratios):.3f}",
                "met" if ratio <= LOG_TARGET else "**missed**",
            ]
        )
    out += _table(
        [
            "broker",
            "calls each",
            "log() median",
            "log() p99",
            "delay() median",
            "delay() p99",
            "ratio, median",
            "ratio, p99",
            "ratio per round",
            f"target: ratio <= {LOG_TARGET:.2f}",
        ],
        rows,
    )
    out += ["", "Split of the difference (medians, µs):", ""]
    rows = []
    for result in report.log:
        s = result.summaries
        log, alone, delay = s["log"].median, s["apply_async"].median, s["delay"].median
        rows.append(
            [
                result.broker.label,
                _us(log),
                f"{_us(alone)} (p99 {_us(s['apply_async'].p99)})",
                _us(delay),
                f"{_us(log - alone)} ({_pct((log - alone) / delay)} of delay())",
                f"{_us(alone - delay)} ({_pct((alone - delay) / delay)})",
            ]
        )
    out += _table(
        [
            "broker",
            "log()",
            "apply_async() alone",
            "delay()",
            "eventlib's own work: log - apply_async",
            "Celery call: apply_async - delay",
        ],
        rows,
    )
    out += [""]
    out += _breakdown(report)
    out += _profile(report)
    return out


def _breakdown(report: Report) -> list[str]:
    if report.breakdown is None:
        return []
    from .bench_log import LOG_STEPS

    b = report.breakdown
    out = [
        "### Where the time goes in `log()`",
        "",
        "The steps of `log()` and `delay()` that do not talk to the broker, timed",
        "alone (`timeit`, median of repeats, µs per call).  Celery builds a",
        "`saferepr()` of the task's arguments for the message's `argsrepr` header",
        "and JSON-encodes the body: for eventlib the arguments are the event name and",
        "the payload text, for the bare task the data dict.",
        "",
    ]
    rows = [[LOG_STEPS[key], _us(value)] for key, value in b.steps.items()]
    rows.insert(4, ["**eventlib's own steps together**", f"**{_us(b.own)}**"])
    out += _table(["step", "µs per call"], rows)
    out += [
        "",
        f"The message body is {b.body_bytes['eventlib']} bytes for eventlib (its JSON payload"
        " travels as a string inside Celery's JSON, so its quotes are escaped) against"
        f" {b.body_bytes['bare']} bytes for the bare task, and the `argsrepr` header"
        f" {b.argsrepr_chars['eventlib']} characters (it carries the payload text) against"
        f" {b.argsrepr_chars['bare']}.",
        "",
    ]
    return out


def _profile(report: Report) -> list[str]:
    profiled = next((r for r in report.log if r.profile), None)
    if profiled is None:
        return []
    delay, log = profiled.profile["delay"], profiled.profile["log"]
    areas = sorted(set(delay) | set(log), key=lambda a: -(log.get(a, 0) + delay.get(a, 0)))
    rows = [
        [
            area,
            _us(delay.get(area, 0.0)),
            _us(log.get(area, 0.0)),
            _us(log.get(area, 0.0) - delay.get(area, 0.0)),
        ]
        for area in areas
    ]
    rows.append(
        [
            "**total**",
            _us(sum(delay.values())),
            _us(sum(log.values())),
            _us(sum(log.values()) - sum(delay.values())),
        ]
    )
    out = [
        f"`cProfile` of {profiled.profile_calls:,} calls of each on {profiled.broker.label}:"
        " own time by package, µs per call (the profiler inflates every Python call, so"
        " read the shares, not the absolute figures):",
        "",
    ]
    out += _table(["package", "delay()", "log()", "difference"], rows)
    out += ["", "eventlib's functions with the most cumulative time in `log()`:", ""]
    out += _table(
        ["function", "cumulative µs per call", "own µs per call"],
        [
            [f"`{name}`", _us(cumulative), _us(own)]
            for name, own, cumulative in profiled.profile_top
        ],
    )
    out += [""]
    return out


# ------------------------------------------------------------------ 2 ---


def _throughput_section(report: Report) -> list[str]:
    out = [
        "## 2. Events per second through one worker",
        "",
        "For each side and round, a new queue is filled with N messages, then one",
        "worker is started on it with",
        f"`{' '.join(WORKER_OPTIONS)}`:",
        "",
        "- **eventlib**: `eventlib worker`, processing `Order` events logged with",
        "  `log()`: the payload is read, `clean()` runs again, the one handler runs,",
        "  and the task returns `None` (its result is ignored);",
        "- **bare**: `celery -A benchmarks.benchapp.bare worker`, eventlib's Celery",
        "  app and configuration with a bare task sent with `delay()`.",
        "",
        "Both do the same work per message (the handler, or the task's body,",
        "increments a counter: a Redis `INCR`, or an SQLite row for the embedded",
        "broker, which needs no server) and both tasks are acknowledged late",
        "(eventlib's task is, so the bare one is too).  The workers time themselves:",
        "the rate is (N - 1) / (time the N-th message finished - time the first",
        "finished), so worker start-up and publishing are not in it, and the",
        "publisher is idle meanwhile.  The sides alternate, in rounds whose order",
        "alternates too (eventlib, bare, bare, eventlib, ...); the rates shown are the",
        "medians of the rounds and the ratio is the median of the rounds' own ratios.",
        "",
    ]
    if not report.throughput:
        return [*out, "No broker could be measured.", ""]
    rows = []
    for result in report.throughput:
        if not result.complete:
            rows.append(
                [result.broker.label, f"{result.messages:,}", result.counter]
                + ["n/a"] * 4
                + [f"failed: {result.error}"]
            )
            continue
        rows.append(
            [
                result.broker.label,
                f"{result.messages:,}",
                result.counter,
                f"{result.rate('eventlib'):,.0f}",
                f"{result.rate('bare'):,.0f}",
                f"**{_ratio(result.ratio)}**",
                ", ".join(f"{r:.2f}" for r in result.round_ratios),
                "met" if result.ratio >= THROUGHPUT_TARGET else "**missed**",
            ]
        )
    out += _table(
        [
            "broker",
            "messages",
            "counter",
            "eventlib worker, msg/s",
            "bare Celery worker, msg/s",
            "ratio",
            "ratio per round",
            f"target: ratio >= {THROUGHPUT_TARGET}",
        ],
        rows,
    )
    out += [
        "",
        "Wall-clock rates move with whatever else the machine runs.  The CPU time",
        "the worker and its pool processes used per message (from /proc, from the",
        "first message processed to the last) is steadier; its ratio (bare over",
        "eventlib) reads like the one above:",
        "",
    ]
    rows = []
    for result in report.throughput:
        if not (result.cpu["eventlib"] and result.cpu["bare"]):
            continue
        eventlib_cpu, bare_cpu = result.cpu_per_message("eventlib"), result.cpu_per_message("bare")
        rows.append(
            [
                result.broker.label,
                _us(eventlib_cpu),
                _us(bare_cpu),
                _us(eventlib_cpu - bare_cpu),
                f"**{_ratio(result.cpu_ratio)}**",
            ]
        )
    out += _table(
        [
            "broker",
            "eventlib, CPU µs per message",
            "bare, CPU µs per message",
            "difference",
            "ratio, bare / eventlib",
        ],
        rows,
    )
    out += [""]
    out += _worker_breakdown(report)
    return out


def _worker_breakdown(report: Report) -> list[str]:
    if report.worker_breakdown is None:
        return []
    steps = report.worker_breakdown.steps
    out = [
        "### Where the time goes in the worker",
        "",
        "What a prefork pool process does per message, timed in this process without",
        "a broker (`timeit`, median of repeats, µs per call, counting made a no-op):",
        "decode the JSON body (task protocol 2), run Celery's tracer around the task,",
        "pickle the tracer's result for the parent process.  The main worker process",
        "(fetching, acknowledging, pool bookkeeping) is not in it.",
        "",
    ]
    from .bench_throughput import WORKER_STEPS

    labels = dict(WORKER_STEPS)
    shown = dict(steps)
    if not report.worker_breakdown.returns_value:
        # The task returns None: there is no dict to build or to repr.
        shown.pop("as_dict", None)
        shown.pop("saferepr", None)
        labels["pickle_eventlib"] = "pickling the tracer's result, eventlib (`None`)"
    rows = [[labels[key], _us(value)] for key, value in shown.items()]
    rows.insert(
        2, ["**difference, eventlib - bare**", f"**{_us(steps['eventlib'] - steps['bare'])}**"]
    )
    out += _table(["step", "µs per call"], rows)
    out += [""]
    return out


# ------------------------------------------------------------------ 3 ---


def _process_section(report: Report) -> list[str]:
    out = [
        "## 3. `process()` against a plain loop and blinker",
        "",
        "In one process, `timeit`-style: each variant is timed over a batch of calls,",
        "the batches interleaved (their order rotates), gc off as `timeit` does;",
        "median and best batch, µs per call.  `process()` does more than call the",
        "handlers: it parses the JSON payload (decoding the `Decimal` and the",
        "`datetime` of the 5-key payload), builds the event, runs `clean()` again",
        "and returns a `ProcessResult`.  The plain loop and blinker get a ready event.",
        "The handler loop of `process()` alone is derived without touching the",
        "library: `process()` of an event with three no-op handlers minus",
        "`process()` of an event with none, both with empty data.",
        "",
    ]
    p = report.process
    if p is None:
        return [*out, "Not measured.", ""]
    from .bench_process import VARIANTS

    plain, blinker = p.median("plain"), p.median("blinker")
    rows = []
    for key, label, _ in VARIANTS:
        value = p.median(key)
        rows.append(
            [
                label,
                f"{p.numbers[key]:,}",
                _us(value),
                _us(p.best(key)),
                f"{value / plain:.2f}x",
                f"{value / blinker:.2f}x",
            ]
        )
    rows.append(
        [
            "**derived: `process()`'s handler loop** (3 handlers - none, empty data)",
            "",
            f"**{_us(p.loop)}**",
            "",
            f"**{p.loop / plain:.2f}x**",
            f"**{p.loop / blinker:.2f}x**",
        ]
    )
    out += _table(
        [
            "variant",
            "calls per batch",
            "median µs",
            "best µs",
            "vs plain loop",
            f"vs blinker {p.blinker_version}",
        ],
        rows,
    )
    out += ["", f"{p.repeats} batches per variant.", ""]
    return out


# ------------------------------------------------------------ reading ---


def _reading(report: Report) -> list[str]:
    out = ["## Reading the numbers", ""]
    out += _reading_log(report)
    out += _reading_worker(report)
    p = report.process
    if p is not None:
        full, plain, blinker = p.median("process_full"), p.median("plain"), p.median("blinker")
        out.append(
            f"- `process()` costs {_us(full)} µs for the 5-key payload and three no-op "
            f"handlers: {full / plain:.0f}x the plain loop and {full / blinker:.1f}x "
            "blinker, but it does more: most of it is reading the payload and rebuilding "
            f"the event ({_us(p.median('process_none'))} µs with no handler and empty "
            f"data).  Its handler loop alone is {_us(p.loop)} µs, {p.loop / plain:.1f}x "
            f"the plain loop and {p.loop / blinker:.2f}x blinker's `send()`: around each "
            "call it keeps the books of the `ProcessResult` (which handler succeeded or "
            "failed) that the other two do not."
        )
    for broker in report.brokers:
        if broker.skipped:
            out.append(f"- {broker.label} was not measured: {broker.skipped}.")
    cpus = os.cpu_count() or 1
    loads = [report.facts.get("load average (1, 5, 15 min) at start", ""), report.load_at_end]
    busy = [text for text in loads if text and float(text.split(",")[0]) > cpus]
    if busy:
        out.append(
            f"- The machine was busy during the run (1-minute load average above its {cpus}"
            f" CPUs: {report.facts.get('load average (1, 5, 15 min) at start')} at the start,"
            f" {report.load_at_end} at the end): absolute figures are pessimistic and"
            " wall-clock rates noisy; the interleaved ratios and the CPU times are the"
            " figures to read."
        )
    out.append("")
    return out


def _reading_log(report: Report) -> list[str]:
    out = []
    for result in report.log:
        s = result.summaries
        ratio = result.ratio("median")
        own = s["log"].median - s["apply_async"].median
        call = s["apply_async"].median - s["delay"].median
        verdict = (
            "within the 10% target"
            if ratio <= LOG_TARGET
            else f"**over the 10% target** by {_pct(ratio - LOG_TARGET)[1:]}"
        )
        low, high = min(result.round_ratios), max(result.round_ratios)
        gross = (
            "within the target too"
            if own / s["delay"].median <= LOG_TARGET - 1
            else "**over the target**"
        )
        out.append(
            f"- `log()` on {result.broker.label}: {_us(s['log'].median)} µs against "
            f"{_us(s['delay'].median)} µs for `delay()` at the median, {_pct(ratio - 1)} "
            f"({verdict}; {_pct(result.ratio('p99') - 1)} at p99; the rounds' own ratios "
            f"range from {low:.2f} to {high:.2f}).  eventlib's own work (`log` - "
            f"`apply_async`) is {_us(own)} µs, {_pct(own / s['delay'].median)} of "
            f"`delay()` (gross, {gross}), and its way of calling Celery (`apply_async` - "
            f"`delay`) {_us(call)} µs."
        )
    if report.breakdown is not None:
        b = report.breakdown
        st = b.steps
        saved = st["argsrepr_bare"] - st["argsrepr_eventlib"]
        text = (
            f"- **Finding:** eventlib's own steps cost {_us(b.own)} µs without a broker "
            f"(`serialize_event()` {_us(st['serialize'])} µs, building the event "
            f"{_us(st['construct'])} µs); in `log()` they come with settings, app and task "
            "lookups: together, the `log` - `apply_async` figures above.  "
            "Celery writes a `saferepr()` of a task's arguments into every message's "
            f"`argsrepr` header: {_us(st['argsrepr_bare'])} µs for the bare task's 5-key "
            f"dict, {_us(st['argsrepr_eventlib'])} µs for eventlib's name and payload "
            f"text, {_us(saved)} µs less (the JSON bodies cost about the same, "
            f"{_us(st['body_eventlib'])} and {_us(st['body_bare'])} µs)."
        )
        cheaper = [
            r.broker.label
            for r in report.log
            if r.summaries["apply_async"].median < r.summaries["delay"].median
        ]
        if cheaper and saved > 0:
            text += (
                f"  So eventlib's Celery call alone is cheaper than `delay()` ("
                f"{', '.join(cheaper)}), which pays back much of eventlib's own work: the "
                "net ratios above flatter eventlib, and the gross figures (own work as a "
                "share of `delay()`) are the fairer reading of its cost."
            )
        out.append(text)
    profiled = next((r for r in report.log if r.profile), None)
    if profiled is not None:
        log = profiled.profile["log"]
        total = sum(log.values())
        mine = log.get("eventlib", 0.0) + log.get("uuid", 0.0) + log.get("json", 0.0)
        out.append(
            f"- The profile on {profiled.broker.label} agrees: eventlib's functions, with "
            f"the `uuid` and `json` calls both sides make, are {mine / total * 100:.0f}% of "
            f"`log()`'s own time; Celery, kombu, the client and socket I/O are the rest."
        )
    return out


def _reading_worker(report: Report) -> list[str]:
    out = []
    for result in report.throughput:
        if not result.complete:
            out.append(f"- Throughput on {result.broker.label} failed: {result.error}.")
            continue
        verdict = "meets" if result.ratio >= THROUGHPUT_TARGET else "**misses**"
        cpu = ""
        if result.cpu["eventlib"] and result.cpu["bare"]:
            cpu = (
                f"; by CPU time per message the ratio is {_ratio(result.cpu_ratio)} "
                f"({_us(result.cpu_per_message('eventlib'))} against "
                f"{_us(result.cpu_per_message('bare'))} µs)"
            )
        out.append(
            f"- One eventlib worker on {result.broker.label} processed "
            f"{result.rate('eventlib'):,.0f} events/s against {result.rate('bare'):,.0f} "
            f"messages/s for the bare task: a ratio of {_ratio(result.ratio)}, which "
            f"{verdict} the {THROUGHPUT_TARGET} target (rounds: "
            f"{', '.join(f'{r:.2f}' for r in result.round_ratios)}){cpu}."
        )
    if report.worker_breakdown is not None:
        wb = report.worker_breakdown
        st = wb.steps
        extra = st["eventlib"] - st["bare"]
        if wb.returns_value:
            text = (
                f"- **Finding:** in a pool process, eventlib's task costs {_us(extra)} µs more "
                f"per message than the bare task; `process()` itself is {_us(st['process'])} µs "
                "of it."
            )
            result_cost = st["as_dict"] + st["saferepr"] + st["pickle_eventlib"]
            result_cost -= st["pickle_bare"]
            compare = "more than" if result_cost > st["process"] else "against"
            text += (
                f"  Returning `ProcessResult.as_dict()` accounts for about "
                f"{_us(result_cost)} µs ({_us(st['as_dict'])} µs to build the dict, "
                f"{_us(st['saferepr'])} µs for the `saferepr()` Celery's tracer computes of "
                "every task's return value, whatever the log level, the rest to pickle both "
                f"for the parent process), {compare} `process()`, although the task ignores "
                "its result (`ignore_result=True`).  A task returning `None` would not pay "
                "it; the library is left unchanged here."
            )
        else:
            share = (
                "about all of the difference"
                if st["process"] >= 0.9 * extra
                else f"the other {_us(extra - st['process'])} µs are outside it"
            )
            text = (
                f"- **Finding:** in a pool process, eventlib's task costs {_us(extra)} µs more "
                f"per message than the bare task, against {_us(st['process'])} µs for "
                f"`process()` itself: {share}.  The task returns `None` (its result is "
                "ignored, `ignore_result=True`; the outcome is in the logs, the counters "
                "and the dead letters), so Celery's tracer has no return value to "
                "`saferepr()` and pickles only `None` for the parent process, as for the "
                "bare task."
            )
        out.append(text)
        for result in report.throughput:
            if not (result.cpu["eventlib"] and result.cpu["bare"]):
                continue
            measured = result.cpu_per_message("eventlib") - result.cpu_per_message("bare")
            if measured > 1.5 * extra:
                out.append(
                    f"- On {result.broker.label} the worker's CPU time per message differs by "
                    f"{_us(measured)} µs, more than the {_us(extra)} µs found in the pool "
                    "process.  The rest is not accounted for by that in-process timing "
                    "(the real worker runs the same code beside its main process and the "
                    "broker, with colder caches, and shares the CPUs with other programs); "
                    "it is not broken down further here."
                )
    return out


def write_section(path: Path, begin: str, end: str, section: str) -> None:
    """Replace the part of ``path`` from the marker ``begin`` to the marker
    ``end`` (both included) with ``section``, or append ``section`` when the
    markers are not there: how the scripts that measure one thing each keep
    their part of ``docs/benchmarks.md``."""
    text = path.read_text() if path.exists() else ""
    start, stop = text.find(begin), text.find(end)
    if start != -1 and stop > start:
        after = text[stop + len(end) :].lstrip("\n")
        text = text[:start] + section.strip("\n") + ("\n\n" + after if after else "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section.strip("\n") + "\n"
    path.write_text(text)
