"""scripts/soak's driver: a chaos soak that proves nothing is lost.

Against the local stack it provisions a fresh queue, DLQ and EventBridge rule (`conveyor infra
up`), starts two daemons on the queue with the real pipelines (graph, projection) plus `chaos`,
the model faked at zero latency, and publishes SOAK_MESSAGES events through EventBridge:
1 % poison (an invalid envelope), 5 % whose `chaos` pipeline fails transiently until the third
receive, 0.2 % whose `chaos` pipeline fails permanently. While they are processed, at random
points of progress: `kill -9` of daemon A three times (restarted at once), PostgreSQL restarted,
the Bolt server restarted, LocalStack frozen for 20 s (SIGSTOP/SIGCONT), SIGTERM of daemon B.

Then it checks and prints: every valid event's effects present exactly once (graph nodes and
PostgreSQL rows against what was sent), every poison and permanently failing event in the DLQ
with its reason and no other, zero events unaccounted for, the duplicate deliveries the ledger
absorbed, and that no log line carries content or the API key.

Phase 2 (SOAK_OUTAGES=0 skips it), with the defaults users get — `infra up`'s maxReceiveCount
of 3, the default backoff and circuit breaker: one event a second while PostgreSQL is stopped
for SOAK_OUTAGE_SECS (150) and then while the model answers 401 for SOAK_KEY_ROTATION_SECS
(60); every event must be processed once and nothing dead-lettered. Exit 0 only if all hold.

Usage: soak.py CONVEYOR_BINARY REPO_DIR   (environment from `scripts/stack env`)
"""

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from fake_model import FakeModel  # noqa: E402

CONVEYOR, REPO = sys.argv[1:3]
N = int(os.environ.get("SOAK_MESSAGES", "20000"))
SEED = int(os.environ.get("SOAK_SEED", str(int(time.time()))))
ENDPOINT = os.environ["AWS_ENDPOINT_URL"]
DATABASE_URL = os.environ["DATABASE_URL"]
GRAPH_HTTP = os.environ["CONVEYOR_STACK_GRAPH_HTTP"]
GRAPH_AUTH = (os.environ["NEO4J_USER"], os.environ["NEO4J_PASSWORD"])
RUN = uuid.uuid4().hex[:10]
QUEUE = f"soak-{RUN}"
SOURCE = f"conveyor.soak.{RUN}"
TENANT = str(uuid.uuid4())
API_KEY = f"sk-soak-{RUN}-do-not-log"
MARKER = f"soakmarker{RUN}"
STATE = tempfile.mkdtemp(prefix=f"conveyor-soak-{RUN}-")
random.seed(SEED)


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def aws(service, target, payload, timeout=30):
    """One call to LocalStack's JSON protocol (it does not check signatures)."""
    version = "1.0" if service == "sqs" else "1.1"
    req = urllib.request.Request(
        ENDPOINT + "/", data=json.dumps(payload).encode(),
        headers={"Content-Type": f"application/x-amz-json-{version}", "X-Amz-Target": target})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


def sqs(action, payload, timeout=30):
    return aws("sqs", "AmazonSQS." + action, payload, timeout)


def sql(query):
    out = subprocess.run(["psql", DATABASE_URL, "-tAc", query], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    return out.stdout.strip()


def cypher(query, tenant=None):
    body = json.dumps({"language": "cypher", "command": query, "params": {"t": tenant or TENANT}}).encode()
    req = urllib.request.Request(GRAPH_HTTP + "/api/v1/command/neo4j", data=body,
                                 headers={"Content-Type": "application/json"})
    import base64
    req.add_header("Authorization", "Basic " + base64.b64encode(":".join(GRAPH_AUTH).encode()).decode())
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())["result"]


# --- the events ------------------------------------------------------------------------

def events():
    """(kind, interaction id, detail) for each event: valid, transient, permanent or poison."""
    out = []
    for i in range(N):
        r = random.random()
        kind = "poison" if r < 0.01 else "permanent" if r < 0.012 else "transient" if r < 0.062 else "valid"
        iid = str(uuid.uuid4())
        extras = {"opportunity_id": f"opp-{i % 97}", "contact_ids": [f"contact-{i % 131}"]}
        if kind == "transient":
            extras["chaos"] = {"fail_until_receive": 3}
        if kind == "permanent":
            extras["chaos"] = {"permanent": True}
        text = (f"Sarah: we went through the {MARKER} figures for the pilot.\n"
                f"Rep: ACTION: Send the {MARKER} deck {i} | owner=Dana Rep | due=2026-12-01\n"
                f"Sarah: ACTION: Book the {MARKER} review {i}\n")
        detail = {"schema_version": "v1", "tenant_id": TENANT, "user_id": f"user-{i % 25}",
                  "interaction_type": "transcript",
                  "content": {"text": text, "format": "html" if kind == "poison" else "diarized"},
                  "timestamp": "2026-11-18T10:30:00Z", "source": "web-mic", "interaction_id": iid,
                  "account_id": f"acct-{i % 41}", "extras": extras}
        out.append((kind, iid, detail))
    return out


def publish(evts, done):
    """PutEvents in batches of 10 from four threads; retries a failed call (LocalStack may be frozen)."""
    batches = [evts[i:i + 10] for i in range(0, len(evts), 10)]
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not batches:
                    return
                batch = batches.pop()
            entries = [{"Source": SOURCE, "DetailType": "EnvelopeV1.transcript", "Detail": json.dumps(d),
                        "EventBusName": "default"} for _, _, d in batch]
            while True:
                try:
                    out = aws("events", "AWSEvents.PutEvents", {"Entries": entries}, timeout=40)
                    if out.get("FailedEntryCount", 0) == 0:
                        break
                except Exception:  # frozen or busy: try again
                    pass
                time.sleep(1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()


# --- daemons -----------------------------------------------------------------------------

def write_config(model_url):
    path = os.path.join(STATE, "soak.toml")
    with open(path, "w") as f:
        f.write(f"""
[telemetry]
log_format = "json"
log_level = "info,conveyor::dispatch=debug"
[ops]
listen_addr = "127.0.0.1:0"
[shutdown]
grace_secs = 10
[infra]
queue_name = "{QUEUE}"
rule_name = "{QUEUE}"
sources = ["{SOURCE}"]
max_receive_count = 10
[extraction]
extractor = "llm"
base_url = "{model_url}"
model = "fake"
requests_per_minute = 1000000
max_concurrent_requests = 32
# Short timeouts keep the ledger's claims short: a claim held by a daemon that was killed -9
# blocks its key until it expires (timeout + 5 s).
[pipelines.graph]
timeout_secs = 30
[pipelines.projection]
timeout_secs = 30
[pipelines.chaos]
timeout_secs = 30
[queues.main]
name = "{QUEUE}"
pollers = 2
max_in_flight = 50
visibility_timeout_secs = 20
lease_renew_before_secs = 8
[queues.main.retry]
base_secs = 1
multiplier = 2.0
cap_secs = 8
[[queues.main.routes]]
source = "{SOURCE}"
detail_type = "EnvelopeV1.*"
pipelines = ["graph", "projection", "chaos"]
""")
    return path


class Daemon:
    def __init__(self, name, config):
        self.name, self.config, self.proc, self.starts = name, config, None, 0
        self.log_path = os.path.join(STATE, f"daemon-{name}.log")

    def start(self):
        env = dict(os.environ, CONVEYOR_ENV="test", CONVEYOR_CONFIG_DIR=os.path.join(REPO, "config"),
                   CONVEYOR_CONFIG=self.config, OPENAI_API_KEY=API_KEY)
        env.pop("RUST_LOG", None)
        out = open(self.log_path, "a")
        self.proc = subprocess.Popen([CONVEYOR, "run"], env=env, stdout=out, stderr=out)
        self.starts += 1

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def term(self, timeout):
        self.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started


# --- the run -------------------------------------------------------------------------------

def processed():
    try:
        return int(sql(f"SELECT count(*) FROM projection_interactions WHERE tenant_id = '{TENANT}'"))
    except Exception:
        return None


def depth(url):
    a = sqs("GetQueueAttributes", {"QueueUrl": url, "AttributeNames": [
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]})["Attributes"]
    return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])


def localstack_pid():
    return int(open(os.environ["CONVEYOR_STACK_LOCALSTACK_PID_FILE"]).read().strip())


def main():
    log(f"run {RUN}: {N} events, seed {SEED}, tenant {TENANT}, state {STATE}")
    model = FakeModel()
    config = write_config(model.url)
    env = dict(os.environ, CONVEYOR_ENV="test", CONVEYOR_CONFIG_DIR=os.path.join(REPO, "config"),
               CONVEYOR_CONFIG=config, OPENAI_API_KEY=API_KEY)
    subprocess.run([CONVEYOR, "infra", "up"], env=env, check=True, stdout=subprocess.DEVNULL)
    url = sqs("GetQueueUrl", {"QueueName": QUEUE})["QueueUrl"]
    dlq_url = sqs("GetQueueUrl", {"QueueName": QUEUE + "-dlq"})["QueueUrl"]

    evts = events()
    kinds = {k: [iid for kk, iid, _ in evts if kk == k] for k in ("valid", "transient", "permanent", "poison")}
    log("mix: " + ", ".join(f"{k} {len(v)}" for k, v in kinds.items()))
    effects_expected = N - len(kinds["poison"])  # permanent ones fail in `chaos` after graph + projection ran

    a, b = Daemon("a", config), Daemon("b", config)
    a.start()
    b.start()
    published = threading.Event()
    threading.Thread(target=publish, args=(evts, published), daemon=True).start()

    # Chaos at random points of progress (fractions of the effects expected).
    plan = sorted([
        (random.uniform(0.05, 0.15), "kill -9 daemon A"),
        (random.uniform(0.15, 0.25), "restart PostgreSQL"),
        (random.uniform(0.25, 0.40), "kill -9 daemon A"),
        (random.uniform(0.40, 0.50), "restart the Bolt server"),
        (random.uniform(0.50, 0.60), "freeze LocalStack for 20 s"),
        (random.uniform(0.60, 0.75), "kill -9 daemon A"),
        (random.uniform(0.75, 0.85), "SIGTERM daemon B"),
    ])
    done_chaos, b_exit = [], None
    deadline = time.monotonic() + 600 + N / 10
    quiet_since = None
    while True:
        if time.monotonic() > deadline:
            log("FAILED: not drained in time")
            break
        count = processed()
        if plan and count is not None and count >= plan[0][0] * effects_expected:
            at, action = plan.pop(0)
            log(f"chaos at {count}/{effects_expected} processed: {action}")
            if action == "kill -9 daemon A":
                a.kill9()
                a.start()
            elif action == "restart PostgreSQL":
                subprocess.run([os.path.join(REPO, "scripts/stack"), "restart", "postgres"], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            elif action == "restart the Bolt server":
                subprocess.run([os.path.join(REPO, "scripts/stack"), "restart", "bolt"], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            elif action == "freeze LocalStack for 20 s":
                os.kill(localstack_pid(), signal.SIGSTOP)
                time.sleep(20)
                os.kill(localstack_pid(), signal.SIGCONT)
            elif action == "SIGTERM daemon B":
                b_exit = b.term(timeout=60)
                log(f"daemon B exited {b_exit[0]} after {b_exit[1]:.1f} s")
            done_chaos.append(action)
            continue
        if published.is_set() and not plan:
            try:
                visible, in_flight = depth(url)
            except Exception:
                visible, in_flight = None, None
            if (visible, in_flight) == (0, 0):
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 10:
                    break
            else:
                quiet_since = None
        time.sleep(0.5)
    code, secs = a.term(timeout=60)
    log(f"daemon A exited {code} after {secs:.1f} s ({a.starts} starts)")

    # --- accounting ---------------------------------------------------------------------
    failures = []

    def check(ok, what):
        log(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            failures.append(what)

    dead = {}
    while True:
        got = sqs("ReceiveMessage", {"QueueUrl": dlq_url, "MaxNumberOfMessages": 10, "VisibilityTimeout": 600,
                                     "MessageAttributeNames": ["All"], "WaitTimeSeconds": 1}).get("Messages", [])
        if not got:
            break
        for m in got:
            detail = json.loads(m["Body"])["detail"]
            reason = m.get("MessageAttributes", {}).get("conveyor.error", {}).get("StringValue", "")
            dead.setdefault(detail["interaction_id"], []).append(reason)
    rows = sql(f"SELECT interaction_id FROM projection_interactions WHERE tenant_id = '{TENANT}'").split()
    effects = set(rows)
    items = int(sql(f"SELECT count(*) FROM projection_action_items WHERE tenant_id = '{TENANT}'"))
    extractions = int(sql(f"SELECT count(*) FROM extractions WHERE tenant_id = '{TENANT}'"))
    graph_interactions = cypher("MATCH (i:Interaction {tenant_id: $t}) RETURN count(i) AS n")[0]["n"]
    graph_distinct = cypher("MATCH (i:Interaction {tenant_id: $t}) RETURN count(DISTINCT i.interaction_id) AS n")[0]["n"]
    graph_items = cypher("MATCH (a:ActionItem {tenant_id: $t}) RETURN count(a) AS n")[0]["n"]

    should_have_effects = set(kinds["valid"] + kinds["transient"] + kinds["permanent"])
    should_be_dead = set(kinds["poison"] + kinds["permanent"])
    sent = should_have_effects | set(kinds["poison"])
    accounted = effects | set(dead)
    lost = sent - accounted
    check(not lost, f"every event accounted for ({len(sent)} sent, {len(lost)} unaccounted)")
    check(effects == should_have_effects, f"projection: {len(effects)} interactions, {len(should_have_effects)} expected")
    check(items == 2 * len(should_have_effects), f"projection: {items} action items, {2 * len(should_have_effects)} expected")
    check(graph_interactions == graph_distinct == len(should_have_effects),
          f"graph: {graph_interactions} Interaction nodes ({graph_distinct} distinct), {len(should_have_effects)} expected")
    check(graph_items == 2 * len(should_have_effects), f"graph: {graph_items} ActionItem nodes, {2 * len(should_have_effects)} expected")
    # An extraction computed while PostgreSQL was down is used unstored (the store is never a
    # gate), so a few may be missing from the table — each one logged by the daemon.
    unstored = sum(1 for d in (a, b) for line in open(d.log_path, errors="replace")
                   if "storing the extraction failed" in line)
    check(extractions <= len(should_have_effects) <= extractions + unstored,
          f"extractions stored at most once each: {extractions} stored, {unstored} used unstored "
          f"while PostgreSQL was down, {len(should_have_effects)} interactions")
    check(set(dead) == should_be_dead, f"DLQ holds exactly the poison and permanent events ({len(dead)} of {len(should_be_dead)})")
    # A copy can land twice: when SQS stalls (the freeze) past a message's lease while its DLQ
    # send is in flight, the message is received again and dead-lettered again. Harmless (same
    # body and reason; effects are guarded by the ledger on redrive), so reported, not failed.
    dead_copies = sum(len(r) - 1 for r in dead.values())
    check(all("detail.content.format" in dead[i][0] for i in kinds["poison"] if i in dead),
          "poison dead-lettered naming the field")
    check(all("chaos" in dead[i][0] for i in kinds["permanent"] if i in dead),
          "permanent failures dead-lettered naming the pipeline")
    check(b_exit is None or b_exit[0] == 0, "daemon B drained and exited 0 on SIGTERM")
    check(code == 0, "daemon A drained and exited 0 on SIGTERM")
    check(len(done_chaos) == 7, f"all chaos happened: {', '.join(done_chaos)}")

    logs = []
    for d in (a, b):
        logs += open(d.log_path, errors="replace").read().splitlines()
    skipped = sum(1 for line in logs if "already succeeded for this key" in line)
    leaks = [line for line in logs if MARKER in line or API_KEY in line or "Dana Rep" in line]
    check(not leaks, f"no log line carries content or the API key ({len(logs)} lines scanned)")
    if leaks:
        log("first leak: " + leaks[0][:300])

    subprocess.run([CONVEYOR, "infra", "down", "--yes"], env=env, stdout=subprocess.DEVNULL)
    print()
    print(f"soak {RUN}: {N} events through EventBridge, seed {SEED}")
    print(f"  sent: {len(kinds['valid'])} valid, {len(kinds['transient'])} transient failures, "
          f"{len(kinds['permanent'])} permanent failures, {len(kinds['poison'])} poison")
    print(f"  chaos: {', '.join(done_chaos)}")
    print(f"  effects: {len(effects)} interactions / {items} action items in PostgreSQL, "
          f"{graph_interactions} / {graph_items} in the graph; {extractions} extractions stored "
          f"({unstored} used unstored while PostgreSQL was down), {model.calls} model calls")
    print(f"  dead-lettered: {len(dead)} (expected {len(should_be_dead)}; {dead_copies} extra DLQ copies); lost: {len(lost)}; "
          f"duplicated effects: {graph_interactions - graph_distinct + len(rows) - len(effects)}")
    print(f"  redelivered pipeline runs the ledger skipped (already succeeded): {skipped}")
    print(f"  logs: {STATE}")
    print("  RESULT: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    print()
    if os.environ.get("SOAK_OUTAGES", "1") != "0":
        failures += outages(model)
    sys.exit(1 if failures else 0)


# --- phase 2: dependency outages with the defaults users get -------------------------------

OUTAGE_SECS = int(os.environ.get("SOAK_OUTAGE_SECS", "150"))
KEY_ROTATION_SECS = int(os.environ.get("SOAK_KEY_ROTATION_SECS", "60"))


def outages(model):
    """A queue as `infra up` makes it (maxReceiveCount 3) and the daemon with the default
    backoff and breaker: one valid event a second through EventBridge while PostgreSQL is
    stopped for OUTAGE_SECS, then while the model answers 401 for KEY_ROTATION_SECS. Afterwards
    every event must be in the graph and the projection once, and the DLQ empty."""
    queue, source, tenant = f"soak-outage-{RUN}", f"conveyor.soak.outage.{RUN}", str(uuid.uuid4())
    config = os.path.join(STATE, "outage.toml")
    with open(config, "w") as f:
        f.write(f"""
[telemetry]
log_format = "json"
log_level = "info"
[ops]
listen_addr = "127.0.0.1:0"
[infra]
queue_name = "{queue}"
rule_name = "{queue}"
sources = ["{source}"]
[extraction]
extractor = "llm"
base_url = "{model.url}"
model = "fake"
[queues.main]
name = "{queue}"
[[queues.main.routes]]
source = "{source}"
detail_type = "EnvelopeV1.*"
pipelines = ["graph", "projection"]
""")
    env = dict(os.environ, CONVEYOR_ENV="test", CONVEYOR_CONFIG_DIR=os.path.join(REPO, "config"),
               CONVEYOR_CONFIG=config, OPENAI_API_KEY=API_KEY)
    subprocess.run([CONVEYOR, "infra", "up"], env=env, check=True, stdout=subprocess.DEVNULL)
    url = sqs("GetQueueUrl", {"QueueName": queue})["QueueUrl"]
    dlq_url = sqs("GetQueueUrl", {"QueueName": queue + "-dlq"})["QueueUrl"]
    daemon = Daemon("outage", config)
    daemon.start()

    sent, stop = [], threading.Event()

    def trickle():
        i = 0
        while not stop.is_set():
            iid = str(uuid.uuid4())
            detail = {"schema_version": "v1", "tenant_id": tenant, "user_id": "user-1",
                      "interaction_type": "transcript",
                      "content": {"text": f"Rep: ACTION: Send the {MARKER} deck {i}\n", "format": "diarized"},
                      "timestamp": "2026-11-18T10:30:00Z", "source": "web-mic", "interaction_id": iid}
            entry = {"Source": source, "DetailType": "EnvelopeV1.transcript", "Detail": json.dumps(detail),
                     "EventBusName": "default"}
            try:
                if aws("events", "AWSEvents.PutEvents", {"Entries": [entry]}).get("FailedEntryCount", 0) == 0:
                    sent.append(iid)
                    i += 1
            except Exception:
                pass
            time.sleep(1)

    publisher = threading.Thread(target=trickle, daemon=True)
    publisher.start()
    stack = os.path.join(REPO, "scripts/stack")
    time.sleep(10)
    log(f"outage phase: PostgreSQL stopped for {OUTAGE_SECS} s")
    subprocess.run([stack, "stop", "postgres"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(OUTAGE_SECS)
    subprocess.run([stack, "start", "postgres"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log("outage phase: PostgreSQL back")
    time.sleep(10)
    log(f"outage phase: the model answers 401 for {KEY_ROTATION_SECS} s (a rotated key)")
    model.fail_for(401, KEY_ROTATION_SECS)
    time.sleep(KEY_ROTATION_SECS + 10)
    stop.set()
    publisher.join()
    log(f"outage phase: {len(sent)} events sent; waiting for them to drain")

    def projected():
        try:
            return int(sql(f"SELECT count(*) FROM projection_interactions WHERE tenant_id = '{tenant}'"))
        except Exception:
            return None

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and (projected() != len(sent) or depth(url) != (0, 0)):
        time.sleep(2)
    code, secs = daemon.term(timeout=60)

    failures = []

    def check(ok, what):
        log(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            failures.append(what)

    rows = sql(f"SELECT interaction_id FROM projection_interactions WHERE tenant_id = '{tenant}'").split()
    graph_n = cypher("MATCH (i:Interaction {tenant_id: $t}) RETURN count(i) AS n", tenant)[0]["n"]
    graph_distinct = cypher("MATCH (i:Interaction {tenant_id: $t}) RETURN count(DISTINCT i.interaction_id) AS n",
                            tenant)[0]["n"]
    dead_visible, dead_in_flight = depth(dlq_url)
    lines = open(daemon.log_path, errors="replace").read().splitlines()
    requeued = sum(1 for line in lines if '"outcome":"requeued"' in line)
    opened = sorted({json.loads(line).get("dependency", "?") for line in lines
                     if "circuit open: dependency unavailable" in line})
    check(set(rows) == set(sent) and len(rows) == len(sent),
          f"outages: every one of {len(sent)} events projected once ({len(rows)} rows)")
    check(graph_n == graph_distinct == len(sent), f"outages: {graph_n} Interaction nodes ({graph_distinct} distinct)")
    check((dead_visible, dead_in_flight) == (0, 0), f"outages: nothing dead-lettered ({dead_visible + dead_in_flight} in the DLQ)")
    check(code == 0, "outages: the daemon drained and exited 0 on SIGTERM")
    check(not [line for line in lines if MARKER in line or API_KEY in line], "outages: no log line carries content or the key")
    subprocess.run([CONVEYOR, "infra", "down", "--yes"], env=env, stdout=subprocess.DEVNULL)
    print(f"outages (defaults: maxReceiveCount 3, 5 s backoff base, breaker 3 failures / 15 s cooldown): "
          f"{len(sent)} events over {OUTAGE_SECS} s without PostgreSQL and {KEY_ROTATION_SECS} s of model 401")
    print(f"  circuits opened: {', '.join(opened) or 'none'}; requeued at maxReceiveCount: {requeued}; "
          f"dead-lettered: {dead_visible + dead_in_flight}")
    print("  RESULT: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    return failures


main()
