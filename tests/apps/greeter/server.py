"""A small threaded HTTP app for supervisor tests: GET / answers greeting.greet(path).

With GREETER_SPIN set, a thread named "spinner" runs spinner.spin() forever.
GET /visit/NAME counts visits on a live `visitors.Visitor` object; /visitor-id/NAME gives its id().

Usage: server.py PORTFILE. Writes the port it listens on to PORTFILE once ready. GET /crash exits
with status 3 (a crash, for restart tests); SIGTERM shuts the server down and exits 0;
SIGHUP prints "hup".
"""

import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import greeting
import spinner
import visitors

# Memory the app has written (so it is resident); a patch that rewrites it in the update child
# copies every page: tests use it to drive the child's own memory up.
BALLAST = bytearray(b"\x01") * (int(os.environ.get("GREETER_BALLAST_MB", "0")) * 2**20)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/crash":
            os._exit(3)
        if self.path.startswith("/visit/"):
            body = visitors.visit(self.path[len("/visit/") :]).encode()
        elif self.path.startswith("/visitor-id/"):
            body = str(id(visitors.VISITORS[self.path[len("/visitor-id/") :]])).encode()
        else:
            body = greeting.greet(self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


def main():
    if os.environ.get("GREETER_SPIN"):
        threading.Thread(target=spinner.spin, name="spinner", daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    signal.signal(signal.SIGHUP, lambda *_: print("hup", flush=True))
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as out:
        out.write(str(server.server_address[1]))
    os.replace(tmp, sys.argv[1])
    print("serving", flush=True)
    server.serve_forever()
    print("bye", flush=True)


if __name__ == "__main__":
    main()
