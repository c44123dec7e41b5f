"""scripts/bench's driver: runs each consumer against the same LocalStack on identical queues
of EventBridge-wrapped ~1 KiB messages and measures, side by side in one run: messages/s, CPU
seconds per 1,000 messages (user + system of the consumer process, from wait4), peak RSS
(ru_maxrss), and SQS requests per message. Writes the table to stdout and BENCHMARKS.md."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from fake_model import FakeModel  # noqa: E402
from stages import stages_toml  # noqa: E402

ENDPOINT = os.environ["AWS_ENDPOINT_URL"]
N = int(os.environ.get("BENCH_MESSAGES", "20000"))
TASKS = int(os.environ.get("BENCH_TASKS", "4"))
IDLE_SECS = int(os.environ.get("BENCH_IDLE_SECS", "60"))
HELPER, CONVEYOR, PEER_DIR, REPO = sys.argv[1:5]


def sqs(action, payload):
    """One call to LocalStack's SQS JSON protocol (it does not check signatures)."""
    req = urllib.request.Request(
        ENDPOINT + "/",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "AmazonSQS." + action},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"{}")


def depth(url):
    a = sqs("GetQueueAttributes", {"QueueUrl": url, "AttributeNames": [
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]})["Attributes"]
    return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])


FIFO_GROUPS = 100


def fresh_queue(label, fill="fill"):
    slug = re.sub(r"[^A-Za-z0-9-]+", "-", label)
    name = f"bench-{slug}-{os.getpid()}-{int(time.time())}"
    fifo = fill == "fill-fifo"
    url = subprocess.check_output([HELPER, "create-fifo" if fifo else "create", name], text=True).strip()
    subprocess.check_call([HELPER, fill, url, str(N)] + ([str(FIFO_GROUPS)] if fifo else []))
    deadline = time.time() + 30
    while depth(url) != (N, 0):
        if time.time() > deadline:
            raise SystemExit(f"{label}: queue holds {depth(url)} after filling {N}")
        time.sleep(0.2)
    return url


def conveyor_metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def metric_sum(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run(label, argv, env=None, prepare=None, requests_at_drain=None, exits_when_done=False,
        fill="fill"):
    """Fills a fresh queue, starts a consumer, and measures it until the queue is drained.

    `prepare(url)` runs before the start (conveyor writes its config there);
    `requests_at_drain()` reads the request count at the moment of draining (conveyor's
    metrics); otherwise the consumer prints its count as its last line of output (the raw
    loop when it is done, the peer on SIGTERM). A consumer that `exits_when_done` (the raw
    loop) is timed to its exit."""
    url = fresh_queue(label, fill)
    if prepare:
        prepare(url)
    argv = [a.replace("{url}", url) for a in argv]
    log_path = f"/tmp/conveyor-bench-{label.replace(' ', '_')}.log"
    log = open(log_path, "w")
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    usage = None

    def reap(block):
        """wait4 ourselves: Popen.poll() would reap the child and lose its rusage."""
        nonlocal usage
        pid, status, ru = os.wait4(proc.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return False
        usage, proc.returncode = ru, os.waitstatus_to_exitcode(status)
        return True

    requests = None
    while True:
        exited = reap(block=False)
        if exited and proc.returncode != 0:
            raise SystemExit(f"{label} exited with {proc.returncode}; log {log_path}")
        if exited or (not exits_when_done and depth(url) == (0, 0)):
            drained_at = time.monotonic()
            if requests_at_drain:
                requests = requests_at_drain()
            break
        if time.monotonic() - start > 600:
            proc.kill()
            raise SystemExit(f"{label}: not drained after 600 s; log {log_path}")
        time.sleep(0.1)
    if usage is None:
        proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read()
    if usage is None:
        reap(block=True)
    if depth(url) != (0, 0):
        raise SystemExit(f"{label} stopped before draining its queue; log {log_path}")
    if requests is None:
        requests = int(out.strip().splitlines()[-1])
    elapsed = drained_at - start
    return {
        "name": label,
        "msgs_per_s": N / elapsed,
        "cpu_per_1k": (usage.ru_utime + usage.ru_stime) / (N / 1000),
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "requests_per_msg": requests / N,
    }


PORT = 19090 + os.getpid() % 1000


def conveyor_env(cfg, ledger_in_postgres=False):
    env = dict(os.environ, CONVEYOR_ENV="test", CONVEYOR_CONFIG_DIR=os.path.join(REPO, "config"),
               CONVEYOR_CONFIG=cfg)
    if not ledger_in_postgres:
        env.pop("DATABASE_URL", None)  # the ledger stays in memory
    return env


def postgres_cpu_seconds():
    """CPU of the stack's PostgreSQL: the postmaster and its backends, reaped ones included."""
    data = os.environ.get("CONVEYOR_STACK_PG_DATA")
    if not data:
        return 0.0
    postmaster = int(open(os.path.join(data, "postmaster.pid")).readline())
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid = int(fields[1])
        if int(pid) == postmaster:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        elif ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def write_conveyor_config(cfg, url, pollers):
    with open(cfg, "w") as f:
        f.write(f'[telemetry]\nlog_level = "warn"\n[ops]\nlisten_addr = "127.0.0.1:{PORT}"\n'
                f'[queues.main]\nurl = "{url}"\npollers = {pollers}\nmax_in_flight = 100\n'
                f'[[queues.main.routes]]\npipelines = ["noop"]\n')


def conveyor_row(ledger_in_postgres=False, fifo=False):
    cfg = f"/tmp/conveyor-bench-{os.getpid()}.toml"
    label = "conveyor + PostgreSQL ledger" if ledger_in_postgres else "conveyor"
    if fifo:
        label = f"conveyor, FIFO queue ({FIFO_GROUPS} groups)"
    pg_before = postgres_cpu_seconds()
    row = run(
        label, [CONVEYOR, "run"], env=conveyor_env(cfg, ledger_in_postgres),
        prepare=lambda url: write_conveyor_config(cfg, url, TASKS),
        requests_at_drain=lambda: metric_sum(conveyor_metrics(PORT), "conveyor_sqs_requests_total"),
        fill="fill-fifo" if fifo else "fill",
    )
    row["pg_cpu_per_1k"] = (postgres_cpu_seconds() - pg_before) / (N / 1000)
    return row


def idle_cost():
    """Requests per minute per poller against an empty queue."""
    url = subprocess.check_output([HELPER, "create", f"bench-idle-{os.getpid()}"], text=True).strip()
    cfg = f"/tmp/conveyor-bench-idle-{os.getpid()}.toml"
    write_conveyor_config(cfg, url, 2)
    proc = subprocess.Popen([CONVEYOR, "run"], env=conveyor_env(cfg),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)
    before = metric_sum(conveyor_metrics(PORT), "conveyor_sqs_requests_total")
    time.sleep(IDLE_SECS)
    after = metric_sum(conveyor_metrics(PORT), "conveyor_sqs_requests_total")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # the second signal skips waiting out the long poll
    proc.wait()
    return (after - before) / (IDLE_SECS / 60) / 2


def ledger_main():
    """conveyor with the in-memory ledger and with the PostgreSQL ledger, side by side."""
    rows = [conveyor_row(), conveyor_row(ledger_in_postgres=True)]
    base, pg = rows
    lines = ["| conveyor (noop pipeline) | msg/s | CPU s / 1k msgs (conveyor) | CPU s / 1k msgs (PostgreSQL) | peak RSS MB | SQS requests / msg |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['msgs_per_s']:.0f} | {r['cpu_per_1k']:.3f} | {r['pg_cpu_per_1k']:.3f} | "
                     f"{r['peak_rss_mb']:.1f} | {r['requests_per_msg']:.3f} |")
    extra_cpu_ms = ((pg["cpu_per_1k"] + pg["pg_cpu_per_1k"]) - (base["cpu_per_1k"] + base["pg_cpu_per_1k"]))
    summary = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores, {N} messages each, "
               f"{TASKS} pollers, one `noop` pipeline per route. The ledger costs two PostgreSQL round trips per "
               f"pipeline per message (claim, then record): {extra_cpu_ms:.3f} ms of CPU per message in all "
               f"(conveyor + PostgreSQL), throughput ×{pg['msgs_per_s'] / base['msgs_per_s']:.2f}.")
    report("ledger", lines, summary)


def histogram_mean(text, name):
    return metric_sum(text, name + "_sum") / max(metric_sum(text, name + "_count"), 1)


def pipelines_row(label, pipelines, model, ledger_in_postgres=True):
    cfg = f"/tmp/conveyor-bench-{os.getpid()}.toml"
    seen = {}

    def prepare(url):
        with open(cfg, "w") as f:
            f.write(f'[telemetry]\nlog_level = "warn"\n[ops]\nlisten_addr = "127.0.0.1:{PORT}"\n'
                    f'[extraction]\nextractor = "llm"\nbase_url = "{model.url}"\nmodel = "fake"\n'
                    f'requests_per_minute = 1000000\nmax_concurrent_requests = 64\n'
                    f'[queues.main]\nurl = "{url}"\npollers = {TASKS}\nmax_in_flight = 100\n'
                    f'[[queues.main.routes]]\npipelines = {json.dumps(pipelines)}\n')

    def at_drain():
        text = conveyor_metrics(PORT)
        seen["graph_ms"] = histogram_mean(text, "conveyor_graph_write_duration_seconds") * 1000
        seen["projection_ms"] = histogram_mean(text, "conveyor_projection_write_duration_seconds") * 1000
        seen["llm_ms"] = histogram_mean(text, "conveyor_llm_request_duration_seconds") * 1000
        seen["handler_ms"] = histogram_mean(text, "conveyor_handler_duration_seconds") * 1000
        return metric_sum(text, "conveyor_sqs_requests_total")

    env = conveyor_env(cfg, ledger_in_postgres)
    env["OPENAI_API_KEY"] = "bench"
    row = run(label, [CONVEYOR, "run"], env=env, prepare=prepare, requests_at_drain=at_drain,
              fill="fill-transcripts")
    row.update(seen)
    return row


def pipelines_main():
    """The real pipelines on 1,000 transcript envelopes with a zero-latency fake model, next
    to the noop pipeline on the same envelopes, side by side in one run."""
    model = FakeModel()
    rows = [
        pipelines_row("noop, ledger in memory", ["noop"], model, ledger_in_postgres=False),
        pipelines_row("noop + PostgreSQL ledger", ["noop"], model),
        pipelines_row("projection", ["projection"], model),
        pipelines_row("graph", ["graph"], model),
        pipelines_row("graph + projection", ["graph", "projection"], model),
    ]
    base = rows[0]
    lines = ["| route (1,000 transcripts) | msg/s | vs noop | mean handler ms | mean model call ms | mean graph write ms | mean projection write ms | CPU s / 1k msgs | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['msgs_per_s']:.0f} | {r['msgs_per_s'] / base['msgs_per_s']:.2f} | "
                     f"{r['handler_ms']:.1f} | {r['llm_ms']:.1f} | {r['graph_ms']:.1f} | {r['projection_ms']:.1f} | "
                     f"{r['cpu_per_1k']:.3f} | {r['peak_rss_mb']:.1f} |")
    summary = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores: {N} "
               f"EnvelopeV1.transcript events (~2 KiB, three action items each) per row, {TASKS} pollers, "
               f"max_in_flight 100, the fake model answering at once (scripts/lib/fake_model.py), "
               f"the stack's PostgreSQL and ArcadeDB (Bolt). The graph rows measure ArcadeDB, which is much slower "
               f"than Neo4j at relationship MERGE (STACK-NOTES); ms columns are means from conveyor's histograms.")
    report("pipelines", lines, summary)


NOTIFY_EVENTS = int(os.environ.get("BENCH_NOTIFY_EVENTS", "100000"))


def metric_labelled(text, name, label):
    """The sum of `name`'s series whose labels include `label` (`result="accepted"`)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and label in line)


def wait_for_ops(label, log_path, port=PORT):
    """Waits up to 30 s for a started daemon's ops listener (its /metrics)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            conveyor_metrics(port)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{label}: the daemon did not start; log {log_path}")
            time.sleep(0.2)


def notify_drop_file(tenant, events=None):
    """A JSON-lines drop of `events` (NOTIFY_EVENTS) NotificationEvents, ~520 bytes a line, for 20 users;
    and their preferences."""
    drop = f"/tmp/conveyor-bench-drop-{os.getpid()}.jsonl"
    prefs = f"/tmp/conveyor-bench-prefs-{os.getpid()}.jsonl"
    run_id = f"{os.getpid()}-{int(time.time())}"
    body = "Your weekly report is ready. " * 10
    with open(drop, "w") as f:
        for i in range(events or NOTIFY_EVENTS):
            f.write(json.dumps({
                "eventId": f"bench-{run_id}-{i}", "source": "bench", "occurredAt": "2026-11-23T10:00:00Z",
                "tenantId": tenant, "user": {"id": f"u-{i % 20}", "channels": ["email", "push"]},
                "content": {"title": f"Report {i}", "body": body,
                            "metadata": {"urgency": ["low", "normal", "high"][i % 3], "category": "account"}},
            }, separators=(",", ":")) + "\n")
    with open(prefs, "w") as f:
        for u in range(20):
            f.write(json.dumps({"tenantId": tenant, "userId": f"u-{u}", "channels": {
                "email": f"u{u}@example.com",
                "push": f"arn:aws:sns:us-east-1:000000000000:endpoint/GCM/bench/u{u}"}}) + "\n")
    return drop, prefs


def notify_row(label, scorer, model):
    """One drop through ingest and ranking: from the end of the upload until every event is on
    the priority queue, the daemon's CPU and peak RSS."""
    import uuid
    prefix = f"bench-notify-{os.getpid()}-{int(time.time())}"
    cfg = f"/tmp/conveyor-bench-notify-{os.getpid()}.toml"
    with open(cfg, "w") as f:
        f.write(f"""[telemetry]
log_level = "warn"
[ops]
listen_addr = "127.0.0.1:{PORT}"
[infra]
queue_name = "{prefix}-events"
rule_name = "{prefix}-events"
sources = ["{prefix}.unused"]
[extraction]
base_url = "{model.url}"
model = "fake"
requests_per_minute = 1000000
max_concurrent_requests = 64
""" + stages_toml(CONVEYOR, REPO, prefix, "--bucket", prefix, "--no-delivery") + f"""scorer = "{scorer}"
""")
    env = conveyor_env(cfg, ledger_in_postgres=True)
    env["OPENAI_API_KEY"] = "bench"
    env["CONVEYOR_QUEUES__INCOMING__POLLERS"] = str(TASKS)
    env["CONVEYOR_QUEUES__INCOMING__MAX_IN_FLIGHT"] = "100"
    quiet = dict(stdout=subprocess.DEVNULL, env=env)
    subprocess.check_call([CONVEYOR, "infra", "up"], **quiet)
    drop, prefs = notify_drop_file(str(uuid.uuid4()))
    subprocess.check_call([CONVEYOR, "notify", "prefs", "import", prefs], **quiet)
    log_path = f"/tmp/conveyor-bench-notify-{scorer}.log"
    proc = subprocess.Popen([CONVEYOR, "run"], env=env, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"))
    wait_for_ops(label, log_path)
    calls_before = model.calls
    started = time.monotonic()
    subprocess.check_call([CONVEYOR, "notify", "drop", drop, "--key", "drops/bench.jsonl"], **quiet)
    uploaded = time.monotonic()
    ingested = None
    while True:
        text = conveyor_metrics(PORT)
        now = time.monotonic()
        if ingested is None and metric_labelled(text, "conveyor_notify_ingested_total", 'result="accepted"') >= NOTIFY_EVENTS:
            ingested = now
        if metric_sum(text, "conveyor_notify_ranked_total") >= NOTIFY_EVENTS:
            ranked = now
            break
        if now - started > 1200:
            proc.kill()
            raise SystemExit(f"{label}: not ranked after 1200 s; log {log_path}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, _, usage = os.wait4(proc.pid, 0)
    size_mb = os.path.getsize(drop) / 1e6
    subprocess.call([CONVEYOR, "infra", "down", "--yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    os.remove(drop)
    return {
        "name": label, "size_mb": size_mb, "upload_s": uploaded - started,
        "ingest_eps": NOTIFY_EVENTS / (ingested - uploaded),
        "e2e_eps": NOTIFY_EVENTS / (ranked - uploaded),
        "cpu_per_1k": (usage.ru_utime + usage.ru_stime) / (NOTIFY_EVENTS / 1000),
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "model_calls": model.calls - calls_before,
    }


def notify_main():
    """One ~58 MB drop (100k events) through notify-ingest and notify-rank, with the rules
    scorer and with the zero-latency fake model, side by side in one run."""
    model = FakeModel()
    rows = [notify_row("rules scorer", "rules", model), notify_row("model scorer (fake, zero latency)", "model", model)]
    lines = ["| scorer | drop MB | events | ingest events/s | ingest + ranking events/s | CPU s / 1k events | daemon peak RSS MB | model calls |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['size_mb']:.1f} | {NOTIFY_EVENTS} | {r['ingest_eps']:.0f} | {r['e2e_eps']:.0f} | "
                     f"{r['cpu_per_1k']:.3f} | {r['peak_rss_mb']:.1f} | {r['model_calls']} |")
    rules, model_row = rows
    summary = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores: one JSON-lines drop "
               f"uploaded with `conveyor notify drop` ({rules['upload_s']:.1f} s to upload, multipart), its S3 notification "
               f"read from the ingest queue in 8 MiB ranges, the lines packed per tenant into batch messages for the "
               f"incoming queue, while {TASKS} pollers rank them (PostgreSQL preferences, score and ledger, per event) "
               f"into the priority queue, packed again (`notify.pack_events`). "
               f"Rates are from the end of the upload; ingest and ranking overlap. The model scorer runs at "
               f"{model_row['e2e_eps'] / rules['e2e_eps']:.2f}× the rules scorer's rate, one model call per event. "
               f"Peak RSS is the whole daemon's (ru_maxrss): the drop is streamed, never held.")
    report("notify", lines, summary)


INTAKE_EVENTS = int(os.environ.get("BENCH_INTAKE_EVENTS", "48000"))


def without_queue(toml, key):
    """The config without `[queues.<key>]` and its routes: a daemon that does not consume it."""
    out, skipping = [], False
    for line in toml.splitlines():
        if line.startswith("["):
            skipping = line in (f"[queues.{key}]", f"[[queues.{key}.routes]]")
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def intake_row(daemons, events=None, pack=True):
    """One drop of `events` (INTAKE_EVENTS) lines read by `daemons` ingest-only daemons (no ranking): from
    the end of the upload until every line is on the incoming queue; lines/s, CPU per 1k lines
    and peak RSS of each daemon, and the ranges each read."""
    import uuid
    events = events or INTAKE_EVENTS
    prefix = f"bench-intake-{os.getpid()}-{int(time.time())}-{daemons}"
    cfg = f"/tmp/conveyor-bench-intake-{os.getpid()}.toml"
    with open(cfg, "w") as f:
        f.write(f"""[telemetry]
log_level = "warn"
[infra]
queue_name = "{prefix}-events"
rule_name = "{prefix}-events"
sources = ["{prefix}.unused"]
""" + without_queue(stages_toml(CONVEYOR, REPO, prefix, "--bucket", prefix, "--no-delivery"), "incoming"))
    env = conveyor_env(cfg, ledger_in_postgres=True)
    quiet = dict(stdout=subprocess.DEVNULL, env=env)
    subprocess.check_call([CONVEYOR, "infra", "up"], **quiet)
    drop, _ = notify_drop_file(str(uuid.uuid4()), events)
    procs = []
    for i in range(daemons):
        port = PORT + 1 + i
        log_path = f"/tmp/conveyor-bench-intake-{daemons}-{i}.log"
        proc_env = dict(env, CONVEYOR_OPS__LISTEN_ADDR=f"127.0.0.1:{port}",
                        CONVEYOR_NOTIFY__PACK_EVENTS="true" if pack else "false")
        procs.append((port, subprocess.Popen([CONVEYOR, "run"], env=proc_env, stdout=subprocess.DEVNULL,
                                             stderr=open(log_path, "w"))))
        wait_for_ops(f"intake daemon {i}", log_path, port)
    subprocess.check_call([CONVEYOR, "notify", "drop", drop, "--key", "drops/intake.jsonl"], **quiet)
    uploaded = time.monotonic()
    while True:
        texts = [conveyor_metrics(port) for port, _ in procs]
        accepted = sum(metric_labelled(t, "conveyor_notify_ingested_total", 'result="accepted"') for t in texts)
        if accepted >= events:
            done = time.monotonic()
            break
        if time.monotonic() - uploaded > 3600:
            raise SystemExit("intake: not ingested after 3600 s")
        time.sleep(0.2)
    ranges = [int(metric_labelled(t, "conveyor_notify_drop_ranges_total", 'result="read"')) for t in texts]
    cpu, rss = 0.0, []
    for _, proc in procs:
        proc.send_signal(signal.SIGTERM)
        _, _, usage = os.wait4(proc.pid, 0)
        cpu += usage.ru_utime + usage.ru_stime
        rss.append(usage.ru_maxrss / 1024)
    size_mb = os.path.getsize(drop) / 1e6
    subprocess.call([CONVEYOR, "infra", "down", "--yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    os.remove(drop)
    return {"daemons": daemons, "pack": pack, "size_mb": size_mb, "lines": events, "lps": events / (done - uploaded),
            "cpu_per_1k": cpu / (events / 1000), "rss": rss, "ranges": ranges}


def intake_main():
    """The same drop read by one ingest-only daemon sending a message per line, then packing
    lines into batches, then by two packing daemons, side by side in one run; with
    BENCH_INTAKE_SIZES_MB (`100,500,1000`), one daemon's peak RSS against the drop's size."""
    sizes = [int(m) for m in os.environ.get("BENCH_INTAKE_SIZES_MB", "").split(",") if m]
    if sizes:
        rows = [intake_row(1, int(mb * 1e6 / 580)) for mb in sizes]
        lines = ["| drop MB | lines | lines/s | CPU s / 1k lines | ranges | daemon peak RSS MB |",
                 "|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['size_mb']:.0f} | {r['lines']} | {r['lps']:.0f} | {r['cpu_per_1k']:.3f} | "
                         f"{r['ranges'][0]} | {r['rss'][0]:.0f} |")
        summary = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores: drops of "
                   f"growing size, each read by one ingest-only daemon in 8 MiB ranges (2 at once). Peak RSS is "
                   f"the daemon's ru_maxrss: memory is bounded by the ranges in flight, not the drop.")
        report("intake-sizes", lines, summary)
        return
    rows = [intake_row(1, pack=False), intake_row(1), intake_row(2)]
    lines = ["| daemons | lines per message | drop MB | lines | lines/s (all daemons) | vs one daemon, one line a message | CPU s / 1k lines | ranges read by each | peak RSS MB of each |",
             "|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['daemons']} | {'packed (batches)' if r['pack'] else 'one'} | {r['size_mb']:.1f} | {r['lines']} | {r['lps']:.0f} | "
                     f"{r['lps'] / rows[0]['lps']:.2f}× | {r['cpu_per_1k']:.3f} | "
                     f"{' + '.join(str(n) for n in r['ranges'])} | {' / '.join(f'{m:.0f}' for m in r['rss'])} |")
    summary = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores: one JSON-lines "
               f"drop (~520 bytes a line) in 8 MiB ranges, read by daemons consuming only the ingest queue (no "
               f"ranking), the lines packed per tenant into batch messages of up to 256 KiB for the incoming queue; "
               f"from the end of the upload until every line is sent. LocalStack runs on the same two cores: a second "
               f"daemon adds a reader, not a core.")
    report("intake", lines, summary)


DELIVERY_EVENTS = int(os.environ.get("BENCH_DELIVERY_EVENTS", "20000"))
DELIVERY_ROUNDS = int(os.environ.get("BENCH_DELIVERY_ROUNDS", "30"))
CHANNELS = ["email", "sms", "push", "webhook"]


def sns_query(params):
    """One SNS query-protocol call to LocalStack (it routes on the credential scope, checks no
    signature)."""
    import urllib.parse
    req = urllib.request.Request(ENDPOINT + "/", data=urllib.parse.urlencode(params).encode(), headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/sns/aws4_request, "
                         "SignedHeaders=host, Signature=0"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read().decode()


def push_endpoints(name, count):
    """A GCM platform application and `count` endpoints in LocalStack: their ARNs."""
    out = sns_query({"Action": "CreatePlatformApplication", "Name": name, "Platform": "GCM",
                     "Attributes.entry.1.key": "PlatformCredential", "Attributes.entry.1.value": "bench",
                     "Attributes.entry.2.key": "PlatformPrincipal", "Attributes.entry.2.value": ""})
    app = re.search(r"<PlatformApplicationArn>(.*?)</PlatformApplicationArn>", out).group(1)
    arns = []
    for i in range(count):
        out = sns_query({"Action": "CreatePlatformEndpoint", "PlatformApplicationArn": app, "Token": f"{name}-{i}"})
        arns.append(re.search(r"<EndpointArn>(.*?)</EndpointArn>", out).group(1))
    return arns


class Sink:
    """A local webhook receiver that answers 204 at once (the receiving end is not measured),
    noting when each webhook-id first arrived (`arrived`, time.monotonic())."""

    def __init__(self):
        import http.server
        import threading
        arrived = self.arrived = {}
        lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    arrived.setdefault(self.headers.get("webhook-id"), time.monotonic())
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def delivery_config(prefix, cfg):
    with open(cfg, "w") as f:
        f.write(f"""[telemetry]
log_level = "warn,conveyor::pipeline::notify_deliver=info"
log_format = "json"
[ops]
listen_addr = "127.0.0.1:{PORT}"
[infra]
queue_name = "{prefix}-events"
rule_name = "{prefix}-events"
sources = ["{prefix}.unused"]
""" + stages_toml(CONVEYOR, REPO, prefix, "--bucket", prefix, "--sender", f"bench@{prefix}.example.com",
                  "--allow-private-targets") + """
# The daemon is measured, not the providers' quotas: buckets far above what it reaches.
[notify.rate_limits]
email = { capacity = 100000, refill_per_sec = 100000 }
sms = { capacity = 100000, refill_per_sec = 100000 }
push = { capacity = 100000, refill_per_sec = 100000 }
webhook = { capacity = 100000, refill_per_sec = 100000 }
""")


def delivery_main():
    """Drop → delivered with the rules scorer over all four channels, then one event per channel
    at a time on the idle daemon: end-to-end latency from occurredAt, p50/p99 per channel."""
    import base64
    import uuid
    prefix = f"bench-deliver-{os.getpid()}-{int(time.time())}"
    cfg = f"/tmp/conveyor-bench-deliver-{os.getpid()}.toml"
    delivery_config(prefix, cfg)
    tenant, users = str(uuid.uuid4()), 20
    env = conveyor_env(cfg, ledger_in_postgres=True)
    env["CONVEYOR_QUEUES__INCOMING__POLLERS"] = str(TASKS)
    env["CONVEYOR_QUEUES__PRIORITY__POLLERS"] = str(TASKS)
    env["NOTIFY_WEBHOOK_SECRETS"] = f"{tenant}=whsec_{base64.b64encode(os.urandom(32)).decode()}"
    quiet = dict(stdout=subprocess.DEVNULL, env=env)
    subprocess.check_call([CONVEYOR, "infra", "up"], **quiet)
    sink = Sink()
    endpoints = push_endpoints(prefix, users)
    prefs = f"/tmp/conveyor-bench-deliver-prefs-{os.getpid()}.jsonl"
    with open(prefs, "w") as f:
        for u in range(users):
            f.write(json.dumps({"tenantId": tenant, "userId": f"u-{u}", "channels": {
                "email": f"u{u}@example.com", "sms": f"+1555000{u:04d}", "push": endpoints[u],
                "webhook": f"{sink.url}/u{u}"}}) + "\n")
    subprocess.check_call([CONVEYOR, "notify", "prefs", "import", prefs], **quiet)
    drop = f"/tmp/conveyor-bench-deliver-{os.getpid()}.jsonl"
    occurred = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(drop, "w") as f:
        for i in range(DELIVERY_EVENTS):
            f.write(json.dumps({
                "eventId": f"{prefix}-{i}", "source": "bench", "occurredAt": occurred, "tenantId": tenant,
                "user": {"id": f"u-{i % users}", "channels": [CHANNELS[i % 4]]},
                "content": {"title": f"Report {i}", "body": "Your weekly report is ready.",
                            "metadata": {"urgency": "normal"}}}, separators=(",", ":")) + "\n")
    log_path = "/tmp/conveyor-bench-deliver.log"
    log_file = open(log_path, "w")
    proc = subprocess.Popen([CONVEYOR, "run"], env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    wait_for_ops("delivery", log_path)
    started = time.monotonic()
    subprocess.check_call([CONVEYOR, "notify", "drop", drop, "--key", "drops/bench.jsonl"], **quiet)
    uploaded = time.monotonic()
    while metric_sum(conveyor_metrics(PORT), "conveyor_notify_delivered_total") < DELIVERY_EVENTS:
        if time.monotonic() - started > 1800:
            proc.kill()
            raise SystemExit(f"delivery: not delivered after 1800 s; log {log_path}")
        time.sleep(0.2)
    delivered = time.monotonic()
    eps = DELIVERY_EVENTS / (delivered - uploaded)
    os.remove(drop)

    # Idle: one event per channel, sent through EventBridge, each waited for before the next.
    log_file.flush()
    mark = os.path.getsize(log_path)
    for r in range(DELIVERY_ROUNDS):
        for c, channel in enumerate(CHANNELS):
            before = metric_sum(conveyor_metrics(PORT), "conveyor_notify_delivered_total")
            import datetime
            now = datetime.datetime.now(datetime.timezone.utc)
            event = {"eventId": f"{prefix}-idle-{r}-{channel}", "source": f"{prefix}.producer",
                     "occurredAt": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
                     "tenantId": tenant, "user": {"id": f"u-{c}", "channels": [channel]},
                     "content": {"title": "Idle", "body": "One at a time.", "metadata": {"urgency": "normal"}}}
            path = f"/tmp/conveyor-bench-idle-{os.getpid()}.json"
            with open(path, "w") as f:
                json.dump(event, f)
            subprocess.check_call([CONVEYOR, "notify", "send", "--file", path], **quiet)
            wait_until = time.monotonic() + 60
            while metric_sum(conveyor_metrics(PORT), "conveyor_notify_delivered_total") <= before:
                if time.monotonic() > wait_until:
                    raise SystemExit(f"delivery: {event['eventId']} not delivered in 60 s; log {log_path}")
                time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, _, usage = os.wait4(proc.pid, 0)
    log_file.close()
    latencies = {c: [] for c in CHANNELS}
    with open(log_path) as f:
        f.seek(mark)
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("message") == "notification delivered" and "-idle-" in str(rec.get("event_id")):
                latencies[rec["channel"]].append(rec["latency_ms"])
    subprocess.call([CONVEYOR, "infra", "down", "--yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    def pct(values, p):
        values = sorted(values)
        return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")
    lines = ["| measure | email | sms | push | webhook |", "|---|---:|---:|---:|---:|",
             "| idle end-to-end latency p50 (ms) | " + " | ".join(f"{pct(latencies[c], 50):.0f}" for c in CHANNELS) + " |",
             "| idle end-to-end latency p99 (ms) | " + " | ".join(f"{pct(latencies[c], 99):.0f}" for c in CHANNELS) + " |",
             f"| throughput, drop → delivered (all channels) | {eps:.0f} events/s | | | |",
             f"| daemon CPU s / 1k events (whole run) | {(usage.ru_utime + usage.ru_stime) / (DELIVERY_EVENTS / 1000):.3f} | | | |",
             f"| daemon peak RSS MB | {usage.ru_maxrss / 1024:.1f} | | | |"]
    summary = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores, one daemon running all "
               f"three stages (rules scorer). Throughput: a drop of {DELIVERY_EVENTS} events, a quarter per channel, from "
               f"the end of its upload until every one is delivered — SES and SNS in LocalStack, webhooks to a local "
               f"receiver answering 204 at once; rate-limit buckets set far above what the daemon reaches, so the "
               f"daemon is measured, not the providers' quotas. Latency: {DELIVERY_ROUNDS} rounds of one event per "
               f"channel sent with `conveyor notify send` on the otherwise idle daemon, from the event's occurredAt to "
               f"the provider's acceptance as the daemon logs it (EventBridge → incoming → ranking → priority → "
               f"delivery: two SQS hops and LocalStack's EventBridge delivery included; with 30 samples the p99 is the slowest of them).")
    report("delivery", lines, summary)


FAIR_A_EVENTS = int(os.environ.get("BENCH_FAIR_EVENTS", "10000"))


def fairness_main():
    """Tenant B's drop → delivered latency alone, then beside tenant A's backlog of
    FAIR_A_EVENTS webhooks queued behind a 10/s bucket; and what A's backlog costs the
    database in bucket statements per notification delivered."""
    import base64
    import uuid
    prefix = f"bench-fair-{os.getpid()}-{int(time.time())}"
    cfg = f"/tmp/conveyor-bench-fair-{os.getpid()}.toml"
    delivery_config(prefix, cfg)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    with open(cfg, "a") as f:
        f.write(f'[notify.tenant_rate_limits."{a}"]\nwebhook = {{ capacity = 10, refill_per_sec = 10 }}\n'
                f'[notify.tenant_rate_limits."{b}"]\nwebhook = {{ capacity = 50, refill_per_sec = 50 }}\n')
    env = conveyor_env(cfg, ledger_in_postgres=True)
    secret = lambda: "whsec_" + base64.b64encode(os.urandom(32)).decode()  # noqa: E731
    env["NOTIFY_WEBHOOK_SECRETS"] = f"{a}={secret()},{b}={secret()}"
    quiet = dict(stdout=subprocess.DEVNULL, env=env)
    subprocess.check_call([CONVEYOR, "infra", "up"], **quiet)
    sink = Sink()
    prefs = f"/tmp/conveyor-bench-fair-prefs-{os.getpid()}.jsonl"
    with open(prefs, "w") as f:
        for t in (a, b):
            f.write(json.dumps({"tenantId": t, "userId": "u-1", "channels": {"webhook": f"{sink.url}/{t}"}}) + "\n")
    subprocess.check_call([CONVEYOR, "notify", "prefs", "import", prefs], **quiet)
    log_path = "/tmp/conveyor-bench-fair.log"
    log_file = open(log_path, "w")
    proc = subprocess.Popen([CONVEYOR, "run"], env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    wait_for_ops("fairness", log_path)

    def drop(tenant, ids, key):
        path = f"/tmp/conveyor-bench-fair-{os.getpid()}.jsonl"
        occurred = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(path, "w") as f:
            for i in ids:
                f.write(json.dumps({"eventId": i, "source": "bench", "occurredAt": occurred, "tenantId": tenant,
                                    "user": {"id": "u-1", "channels": ["webhook"]},
                                    "content": {"title": "T", "body": "B", "metadata": {"urgency": "normal"}}}) + "\n")
        started = time.monotonic()
        subprocess.check_call([CONVEYOR, "notify", "drop", path, "--key", key], **quiet)
        os.remove(path)
        return started

    def b_round(name):
        ids = [f"{prefix}-b-{name}-{i}" for i in range(100)]
        started = drop(b, ids, f"drops/b-{name}.jsonl")
        while not all(i in sink.arrived for i in ids):
            if time.monotonic() - started > 600:
                raise SystemExit(f"fairness: B's {name} round not delivered in 600 s; log {log_path}")
            time.sleep(0.05)
        return sorted(sink.arrived[i] - started for i in ids)

    def pct(values, p):
        return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]

    b_round("warmup")
    alone = b_round("alone")
    a_ids = [f"{prefix}-a-{i}" for i in range(FAIR_A_EVENTS)]
    a_started = drop(a, a_ids, "drops/a.jsonl")
    incoming = sqs("GetQueueUrl", {"QueueName": f"{prefix}-incoming"})["QueueUrl"]
    priority = sqs("GetQueueUrl", {"QueueName": f"{prefix}-priority"})["QueueUrl"]
    # Queued behind its bucket: ranked, and deferred to reserved tokens (nothing visible).
    settled = 0
    while settled < 3:
        time.sleep(1)
        settled = settled + 1 if depth(incoming) == (0, 0) and depth(priority)[0] == 0 else 0
        if time.monotonic() - a_started > 1800:
            raise SystemExit(f"fairness: A's backlog not queued after 1800 s; log {log_path}")
    first_pass = time.monotonic() - a_started
    a_before = sum(1 for i in a_ids if i in sink.arrived)
    decisions_before = metric_sum(conveyor_metrics(PORT), "conveyor_notify_bucket_decisions_total")
    window_start = time.monotonic()
    beside = b_round("beside")
    time.sleep(10)
    window = time.monotonic() - window_start
    a_delivered = sum(1 for i in a_ids if i in sink.arrived) - a_before
    decisions = metric_sum(conveyor_metrics(PORT), "conveyor_notify_bucket_decisions_total") - decisions_before
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    log_file.close()
    subprocess.call([CONVEYOR, "infra", "down", "--yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    lines = ["| tenant B, drop → delivered | alone | beside A's backlog | ratio |", "|---|---:|---:|---:|",
             f"| p50 (s) | {pct(alone, 50):.2f} | {pct(beside, 50):.2f} | {pct(beside, 50) / pct(alone, 50):.2f} |",
             f"| p99 (s) | {pct(alone, 99):.2f} | {pct(beside, 99):.2f} | {pct(beside, 99) / pct(alone, 99):.2f} |",
             "",
             "| tenant A (10/s) while B ran | |", "|---|---:|",
             f"| delivered in {window:.0f} s | {a_delivered} ({a_delivered / window:.1f}/s) |",
             f"| bucket statements (B's 100 included) / A's delivered | {decisions / max(1, a_delivered):.3f} |",
             f"| first pass over A's {FAIR_A_EVENTS} (drop to all reserved and deferred) | {first_pass:.0f} s |"]
    summary = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores, one daemon running "
               f"all three stages with the shipped defaults (fairness on, leases on). Tenant B (bucket 50/s) drops 100 "
               f"webhooks and each is timed from the start of its upload to its arrival at a local receiver: once on "
               f"the quiet daemon (after a warm-up round), once after tenant A dropped {FAIR_A_EVENTS} webhooks behind a "
               f"bucket of 10/s and the daemon had ranked, reserved and deferred all of them (A's first pass: the row "
               f"below; B dropped during it waits behind it in the queues, which SQS fair queues address and LocalStack "
               f"does not have). Bucket statements are conveyor_notify_bucket_decisions_total over the window.")
    report("fairness", lines, summary)


def buckets_main():
    """Token decisions per second on one hot rate-limit bucket: a statement per take against
    leases of up to a second of refill, side by side on the same PostgreSQL."""
    tasks, secs = 64, 10
    rows = []
    for label, lease_ms in (("per take (`rate_limit_lease_ms = 0`)", 0), ("leased (the default, 1000 ms)", 1000)):
        out = subprocess.run([HELPER, "buckets", str(lease_ms), str(tasks), str(secs)],
                             check=True, capture_output=True, text=True).stdout
        result = dict(p.split("=") for p in out.split("RESULT", 1)[1].split())
        rows.append((label, float(result["decisions_per_s"]), float(result["statements_per_decision"])))
    base = rows[0][1]
    lines = ["| bucket | decisions/s | vs per take | statements / decision |", "|---|---:|---:|---:|"]
    for label, dps, spd in rows:
        lines.append(f"| {label} | {dps:,.0f} | {dps / base:.1f}× | {spd:.6f} |")
    summary = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores: {tasks} tasks "
               f"taking tokens of one bucket for {secs} s in one process (`bench buckets`), its refill far above the "
               f"demand so every decision is a token now. The test cluster runs with `fsync = off`: on a durable "
               f"server each per-take statement also waits for its commit, so the per-take row is an upper bound and "
               f"the gap wider. Leased, a statement carries up to a second of the bucket's refill (here as many "
               f"tokens as were taken in the last second).")
    report("buckets", lines, summary)


def main():
    if os.environ.get("BENCH_ONLY") == "intake":
        return intake_main()
    if os.environ.get("BENCH_ONLY") == "fairness":
        return fairness_main()
    if os.environ.get("BENCH_ONLY") == "buckets":
        return buckets_main()
    if os.environ.get("BENCH_ONLY") == "delivery":
        return delivery_main()
    if os.environ.get("BENCH_ONLY") == "notify":
        return notify_main()
    if os.environ.get("BENCH_ONLY") == "ledger":
        return ledger_main()
    if os.environ.get("BENCH_ONLY") == "pipelines":
        return pipelines_main()
    node = ["node", os.path.join(PEER_DIR, "sqs-consumer.mjs"), "{url}"]
    rows = [
        conveyor_row(),
        run(f"raw-loop-{TASKS}-tasks", [HELPER, "raw-loop", "{url}", str(TASKS), str(N)], exits_when_done=True),
        run("sqs-consumer-1", node + ["1"]),
        run("sqs-consumer-4", node + ["4"]),
        conveyor_row(fifo=True),
    ]
    idle = idle_cost() if IDLE_SECS >= 20 else None
    standard, raw, peer4, fifo = rows[0], rows[1], rows[3], rows[4]
    header = "| consumer | msg/s | vs raw loop | CPU s / 1k msgs | vs sqs-consumer ×4 | peak RSS MB | SQS requests / msg |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['msgs_per_s']:.0f} | {r['msgs_per_s'] / raw['msgs_per_s']:.2f} | "
            f"{r['cpu_per_1k']:.3f} | {r['cpu_per_1k'] / peer4['cpu_per_1k']:.2f} | {r['peak_rss_mb']:.1f} | "
            f"{r['requests_per_msg']:.3f} |")
    summary = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores. "
               f"{N} EventBridge-wrapped ~1 KiB messages per consumer, one fresh queue each, same LocalStack, "
               f"{TASKS} pollers/tasks for conveyor and the raw loop; conveyor routes to the `noop` pipeline.\n"
               f"FIFO: the same messages into a FIFO queue, round-robin over {FIFO_GROUPS} message groups "
               f"(each group handled one message at a time, its delete applied before the next starts): "
               f"{fifo['msgs_per_s'] / standard['msgs_per_s']:.2f}× the standard queue's msg/s, "
               f"{fifo['cpu_per_1k'] / standard['cpu_per_1k']:.2f}× its CPU per 1k messages.\n"
               + (f"Idle cost: {idle:.1f} SQS requests per minute per poller (20 s long polls)." if idle is not None
                  else f"Idle cost: not measured in this run (BENCH_IDLE_SECS={IDLE_SECS} is shorter than one 20 s long poll)."))
    report("engine", lines, summary)


def report(name, lines, summary):
    """Prints the table and its summary, and writes them as BENCHMARKS.md's `name` section."""
    table = "\n".join(lines)
    print(table)
    print(summary)
    write_section(name, table + "\n\n" + summary)


def write_section(name, text):
    """Replaces this benchmark's section of BENCHMARKS.md (between its markers), keeping the rest."""
    path = os.path.join(REPO, "BENCHMARKS.md")
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{text}\n{end}"
    doc = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if start in doc and end in doc:
        doc = doc[:doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


main()
