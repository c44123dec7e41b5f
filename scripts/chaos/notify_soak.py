"""scripts/soak's notification phase: NOTIFY_SOAK_EVENTS (10,000) notifications through all three
stages — intake (S3 drops and EventBridge), ranking, delivery — under chaos, with the defaults
users get (`infra up`'s maxReceiveCount of 3, the shipped timeouts, backoff and attempts).

It provisions its own bucket, queues and rule (`conveyor infra up`) and a database of its own,
imports preferences for 5 tenants × 40 users (email, SMS and a webhook to a local receiver,
failover webhook → email), and sends 80 % of the events as four JSON-lines drops (`conveyor
notify drop`) and 20 % through EventBridge. 1 % of drop lines are invalid (the rejects objects
must list exactly them), 0.5 % of EventBridge events are invalid and 0.5 % name a user without
preferences (the incoming DLQ must hold exactly those, each with its reason). Two daemons run
every stage; while they work: the webhook receiver flaps (answers 503 for 4 s of every 10),
`kill -9` of daemon A twice (restarted at once), PostgreSQL restarted.

Then it checks: every valid notification delivered (webhook receiver, LocalStack's SES and SNS
records), repeats only within the documented window (bounded by what two kills can leave
between a provider's answer and the record), every webhook signature valid, the priority DLQ
empty, no log line with content or an address. Exit 0 only if all hold.

Usage: notify_soak.py CONVEYOR_BINARY REPO_DIR   (environment from `scripts/stack env`)
"""

import base64
import hashlib
import hmac
import http.server
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
from stages import stages_toml  # noqa: E402

CONVEYOR, REPO = sys.argv[1:3]
N = int(os.environ.get("NOTIFY_SOAK_EVENTS", "10000"))
# A send cut by kill -9 is in doubt and waits notify.delivery.in_doubt_hold_secs (300 by default)
# before it goes again: the default here unless set (scripts/test's reduced soak shortens it).
IN_DOUBT_HOLD = os.environ.get("NOTIFY_SOAK_IN_DOUBT_HOLD_SECS")
SEED = int(os.environ.get("SOAK_SEED", str(int(time.time()))))
ENDPOINT = os.environ["AWS_ENDPOINT_URL"]
DATABASE_URL = os.environ["DATABASE_URL"]
RUN = uuid.uuid4().hex[:10]
P = f"nsoak-{RUN}"
SOURCE = f"conveyor.nsoak.{RUN}"
DB = f"nsoak_{RUN}"
DB_URL = DATABASE_URL.rsplit("/", 1)[0] + "/" + DB
MARKER = f"bodymark{RUN}"
STATE = tempfile.mkdtemp(prefix=f"conveyor-nsoak-{RUN}-")
TENANTS = [str(uuid.uuid4()) for _ in range(5)]
USERS = 40
KEYS = {t: os.urandom(32) for t in TENANTS}
SECRETS = ",".join(f"{t}=whsec_{base64.b64encode(k).decode()}" for t, k in KEYS.items())
random.seed(SEED)


def log(msg):
    print(f"[notify soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def aws(target, payload, timeout=30):
    version = "1.0" if target.startswith("AmazonSQS") else "1.1"
    req = urllib.request.Request(
        ENDPOINT + "/", data=json.dumps(payload).encode(),
        headers={"Content-Type": f"application/x-amz-json-{version}", "X-Amz-Target": target})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


def record(path, key):
    """LocalStack's record of what SES / SNS sent; asked again when an answer lacks `key` (under
    load it answers these internal endpoints with an error now and then)."""
    for _ in range(20):
        try:
            with urllib.request.urlopen(ENDPOINT + path, timeout=60) as resp:
                out = json.loads(resp.read())
            if key in out:
                return out
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"LocalStack's {path} never answered with {key}")


def psql(url, query):
    out = subprocess.run(["psql", url, "-tAc", query], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    return out.stdout.strip()


# --- the webhook receiver ------------------------------------------------------------------

class Receiver(http.server.BaseHTTPRequestHandler):
    hits = []          # (webhook-id, status, signature valid)
    lock = threading.Lock()
    flapping = threading.Event()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        wid, ts = self.headers.get("webhook-id", ""), self.headers.get("webhook-timestamp", "")
        tenant = self.path.strip("/").split("/")[1] if self.path.count("/") >= 2 else ""
        key = KEYS.get(tenant, b"")
        mac = hmac.new(key, f"{wid}.{ts}.".encode() + body, hashlib.sha256).digest()
        valid = f"v1,{base64.b64encode(mac).decode()}" in self.headers.get("webhook-signature", "").split(" ")
        down = self.flapping.is_set() and int(time.time()) % 10 < 4
        status = 503 if down else 200
        with self.lock:
            self.hits.append((wid, status, valid))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def start_receiver():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


# --- set-up --------------------------------------------------------------------------------

def write_config():
    path = os.path.join(STATE, "notify-soak.toml")
    stages = stages_toml(CONVEYOR, REPO, P, "--bucket", P, "--source", SOURCE, "--allow-private-targets")
    with open(path, "w") as f:
        f.write(f"""
[telemetry]
log_format = "json"
[ops]
listen_addr = "127.0.0.1:0"
[infra]
queue_name = "{P}-events"
rule_name = "{P}-events"
sources = ["{P}.unused"]
""" + stages)
        if IN_DOUBT_HOLD:
            f.write(f"[notify.delivery]\nin_doubt_hold_secs = {int(IN_DOUBT_HOLD)}\n")
    return path


def env(config):
    e = dict(os.environ, CONVEYOR_ENV="test", CONVEYOR_CONFIG_DIR=os.path.join(REPO, "config"),
             CONVEYOR_CONFIG=config, DATABASE_URL=DB_URL, NOTIFY_WEBHOOK_SECRETS=SECRETS)
    e.pop("RUST_LOG", None)
    return e


def cli(config, *args):
    out = subprocess.run([CONVEYOR, *args], env=env(config), capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"conveyor {' '.join(args)}: {out.stdout}\n{out.stderr}")
    return out.stdout


class Daemon:
    def __init__(self, name, config):
        self.name, self.config, self.proc = name, config, None
        self.log_path = os.path.join(STATE, f"daemon-{name}.log")

    def start(self):
        out = open(self.log_path, "a")
        self.proc = subprocess.Popen([CONVEYOR, "run"], env=env(self.config), stdout=out, stderr=out)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def term(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def events(receiver):
    """(kind, event, via): kind is valid / invalid / no_user; via is drop or eventbridge."""
    out, prefs = [], []
    for t in TENANTS:
        for u in range(USERS):
            prefs.append({"tenantId": t, "userId": f"u-{u}", "failoverOrder": ["webhook", "email", "sms"],
                          "channels": {"email": f"addrmark-{u}@{P}.example.com",
                                       "sms": f"+1555{TENANTS.index(t):03d}{u:04d}",
                                       "webhook": f"{receiver}/hook/{t}/{u}"}})
    for i in range(N):
        via = "eventbridge" if random.random() < 0.2 else "drop"
        r = random.random()
        kind = "valid"
        if via == "drop" and r < 0.01:
            kind = "invalid"
        elif via == "eventbridge" and r < 0.005:
            kind = "invalid"
        elif via == "eventbridge" and r < 0.01:
            kind = "no_user"
        t = TENANTS[i % len(TENANTS)]
        channels = random.choice([["webhook", "email"], ["webhook", "email"], ["email"], ["sms"]])
        user = f"u-{i % USERS}" if kind != "no_user" else "nobody"
        event = {"eventId": f"{P}-{i}", "source": "billing",
                 "occurredAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "tenantId": t, "user": {"id": user, "channels": channels},
                 "content": {"title": f"N {P}-{i}", "body": f"{MARKER} private words",
                             "metadata": {"urgency": "normal"}}}
        if kind == "invalid":
            del event["user"]["id"]
        out.append((kind, event, via))
    return out, prefs


def send_eventbridge(evts):
    for i in range(0, len(evts), 10):
        entries = [{"Source": SOURCE, "DetailType": "NotificationRequested", "Detail": json.dumps(e),
                    "EventBusName": "default"} for e in evts[i:i + 10]]
        while True:
            try:
                if aws("AWSEvents.PutEvents", {"Entries": entries}).get("FailedEntryCount", 0) == 0:
                    break
            except Exception:
                pass
            time.sleep(1)


def delivered_ids(ids):
    """eventId → sends accepted, over the webhook receiver, SES and SNS SMS."""
    sent = {}

    def count(text):
        last = (text or "").split("\n")[0].split(" ")[-1]
        if last in ids:
            sent[last] = sent.get(last, 0) + 1
    for m in record("/_aws/ses", "messages")["messages"]:
        count(m.get("Subject"))
    for msgs in record("/_aws/sns/sms-messages", "sms_messages")["sms_messages"].values():
        for m in msgs:
            count(m.get("Message"))
    with Receiver.lock:
        for wid, status, _ in Receiver.hits:
            if status < 300 and wid in ids:
                sent[wid] = sent.get(wid, 0) + 1
    return sent


def depth(name):
    url = aws("AmazonSQS.GetQueueUrl", {"QueueName": name})["QueueUrl"]
    a = aws("AmazonSQS.GetQueueAttributes", {"QueueUrl": url, "AttributeNames": [
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed"]})["Attributes"]
    return url, sum(int(a[k]) for k in a)


def main():
    log(f"run {RUN}, seed {SEED}, {N} notifications")
    psql(DATABASE_URL, f"CREATE DATABASE {DB}")
    receiver = start_receiver()
    config = write_config()
    cli(config, "infra", "up")
    evts, prefs = events(receiver)
    prefs_file = os.path.join(STATE, "prefs.jsonl")
    with open(prefs_file, "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in prefs)
    cli(config, "notify", "prefs", "import", prefs_file)

    a, b = Daemon("a", config), Daemon("b", config)
    a.start()
    b.start()
    Receiver.flapping.set()
    started = time.monotonic()
    drops = [e for k, e, v in evts if v == "drop"]
    drop_lines = []
    for k, e, v in evts:
        if v == "drop":
            drop_lines.append(json.dumps(e) if k != "invalid" else json.dumps(e)[:-5])
    parts = [drop_lines[i::4] for i in range(4)]
    for n, lines in enumerate(parts):
        path = os.path.join(STATE, f"drop-{n}.jsonl")
        with open(path, "w") as f:
            f.writelines(line + "\n" for line in lines)
        cli(config, "notify", "drop", path, "--key", f"drops/{n}.jsonl")
    log(f"{len(drops)} events dropped in 4 files")
    bridge = threading.Thread(target=send_eventbridge, args=([e for k, e, v in evts if v == "eventbridge"],))
    bridge.start()

    valid = {e["eventId"] for k, e, v in evts if k == "valid"}
    chaos = sorted([(0.2, "kill -9 A"), (0.45, "restart PostgreSQL"), (0.7, "kill -9 A")])
    deadline = time.monotonic() + max(600, N * 0.12)
    kills = 0
    while True:
        sent = delivered_ids(valid)
        progress = len(sent) / max(1, len(valid))
        while chaos and progress >= chaos[0][0]:
            _, action = chaos.pop(0)
            log(f"{action} at {progress:.0%}")
            if action == "kill -9 A":
                a.kill9()
                kills += 1
                a.start()
            else:
                subprocess.run([os.path.join(REPO, "scripts/stack"), "restart", "postgres"], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if len(sent) == len(valid) or time.monotonic() > deadline:
            break
        time.sleep(2)
    bridge.join()
    Receiver.flapping.clear()
    elapsed = time.monotonic() - started
    # Let the dead letters settle (an invalid event's receives), then stop.
    settle = time.monotonic() + 120
    while time.monotonic() < settle:
        if all(depth(f"{P}-{q}")[1] == 0 for q in ("ingest", "incoming", "priority")):
            break
        time.sleep(2)
    codes = [a.term(), b.term()]

    failures = []

    def check(ok, what):
        log(("PASS " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    sent = delivered_ids(valid)
    missing = valid - set(sent)
    repeats = sum(n - 1 for n in sent.values())
    log(f"{len(sent)} of {len(valid)} valid notifications delivered in {elapsed:.0f} s "
        f"({len(sent) / elapsed:.0f}/s end to end); {repeats} repeats after {kills} kill -9")
    check(not missing, f"every valid notification delivered ({len(missing)} missing, e.g. {sorted(missing)[:3]})")
    # What two kills can leave in doubt: at most the sends in flight, ≤ max_in_flight.
    check(repeats <= kills * 100, f"repeats only from sends in doubt ({repeats} ≤ {kills * 100})")
    with Receiver.lock:
        bad = [w for w, s, ok in Receiver.hits if not ok]
        flapped = sum(1 for _, s, _ in Receiver.hits if s == 503)
    check(not bad, f"every webhook signature verifies with its tenant's key ({len(bad)} bad)")
    log(f"the receiver answered 503 {flapped} times while flapping")

    incoming_dlq, _ = depth(f"{P}-incoming-dlq")
    letters = []
    while True:
        got = aws("AmazonSQS.ReceiveMessage", {"QueueUrl": incoming_dlq, "MaxNumberOfMessages": 10,
                                               "MessageAttributeNames": ["All"], "WaitTimeSeconds": 1})
        if not got.get("Messages"):
            break
        for m in got["Messages"]:
            letters.append(m)
            aws("AmazonSQS.DeleteMessage", {"QueueUrl": incoming_dlq, "ReceiptHandle": m["ReceiptHandle"]})
    by_id = {}
    for m in letters:
        detail = json.loads(m["Body"]).get("detail", {})
        by_id[detail.get("eventId")] = m["MessageAttributes"].get("conveyor.error", {}).get("StringValue", "")
    want_invalid = {e["eventId"] for k, e, v in evts if k == "invalid" and v == "eventbridge"}
    want_no_user = {e["eventId"] for k, e, v in evts if k == "no_user"}
    check(set(by_id) == want_invalid | want_no_user,
          f"the incoming DLQ holds exactly the {len(want_invalid)} invalid and {len(want_no_user)} "
          f"unreachable events ({len(by_id)} there)")
    check(all("user.id" in by_id[i] for i in want_invalid if i in by_id), "invalid ones name the field user.id")
    check(all("no usable channel" in by_id[i] for i in want_no_user if i in by_id),
          "unreachable ones name the reason: no usable channel")
    _, priority_dlq = depth(f"{P}-priority-dlq")
    check(priority_dlq == 0, f"nothing dead-lettered from priority ({priority_dlq})")

    rejects = 0
    for n in range(4):
        try:
            with urllib.request.urlopen(f"{ENDPOINT}/{P}/drops/{n}.jsonl.rejects.jsonl", timeout=30) as r:
                rejects += len([line for line in r.read().decode().splitlines() if line.strip()])
        except Exception:
            pass
    want_rejects = sum(1 for k, e, v in evts if k == "invalid" and v == "drop")
    check(rejects == want_rejects, f"the rejects objects list the {want_rejects} invalid lines ({rejects})")

    leaks = []
    for d in (a, b):
        with open(d.log_path) as f:
            leaks += [line for line in f if MARKER in line or "addrmark" in line]
    check(not leaks, f"no log line carries content or an address ({len(leaks)})")
    check(codes == [0, 0], f"both daemons drained and exited 0 on SIGTERM ({codes})")

    if failures:
        log(f"FAILED ({len(failures)}); daemon logs in {STATE}")
        sys.exit(1)
    psql(DATABASE_URL, f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    log("notification phase PASS")


if __name__ == "__main__":
    main()
