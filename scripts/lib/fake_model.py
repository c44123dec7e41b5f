"""A zero-latency OpenAI-compatible chat endpoint for scripts (bench, soak): the protocol of
tests/it/fake_llm.rs — one action item per line containing `ACTION:`, written
`ACTION: <description> [| owner=<name>] [| due=<YYYY-MM-DD>]`; asked for a notification's priority
(schema `notification_priority`), 5 for `"urgency":"critical"` metadata, else 3. Counts the calls
it answers."""

import http.server
import json
import threading
import time


class FakeModel:
    """A zero-latency OpenAI-compatible chat endpoint (the protocol of tests/it/fake_llm.rs:
    one action item per `ACTION:` line), so the pipelines' own cost is what is measured."""

    def __init__(self):
        model = self
        self.calls = 0
        self.lock = threading.Lock()
        # (status, until monotonic time): answer every chat request with this status until then.
        self.failing = None

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):  # GET /v1/models: the readiness probe
                body = json.dumps({"object": "list", "data": [{"id": "fake", "object": "model",
                                                               "created": 0, "owned_by": "scripts"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                with model.lock:
                    model.calls += 1
                    failing = model.failing
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if failing and time.monotonic() < failing[1]:
                    body = b'{"error": {"message": "scripted failure", "type": "soak"}}'
                    self.send_response(failing[0])
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                user = next(m["content"] for m in request["messages"] if m["role"] == "user")
                schema = request.get("response_format", {}).get("json_schema", {}).get("name")
                if schema == "notification_priority":
                    self.answer(user, json.dumps({
                        "priority": 5 if '"urgency":"critical"' in user else 3,
                        "score_breakdown": {"urgency": 0.5, "relevance": 0.5, "timeliness": 0.5},
                        "reason": "scored by the fake model"}))
                    return
                items = []
                for line in user.splitlines():
                    if "ACTION:" not in line:
                        continue
                    parts = [p.strip() for p in line.split("ACTION:", 1)[1].split("|")]
                    owner, due = None, None
                    for p in parts[1:]:
                        if p.startswith("owner="):
                            owner = {"name": p[6:], "email": None}
                        elif p.startswith("due="):
                            due = p[4:]
                    items.append({"description": parts[0], "owner": owner, "due_date": due, "status": "open",
                                  "priority": "medium", "confidence": 0.9})
                self.answer(user, json.dumps({"action_items": items}))

            def answer(self, user, content):
                body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "fake",
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": content}}],
                                   "usage": {"prompt_tokens": len(user) // 4, "completion_tokens": len(content) // 4,
                                             "total_tokens": (len(user) + len(content)) // 4}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client killed mid-request (the soak's kill -9) is not news

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fail_for(self, status, seconds):
        """Answers every chat request with `status` for `seconds` (503: down; 401: key rotated)."""
        with self.lock:
            self.failing = (status, time.monotonic() + seconds)
