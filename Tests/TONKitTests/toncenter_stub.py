"""A loopback stand-in for a toncenter v2 server, answering with the recorded bodies of
../shared/testdata/ton/toncenter (a peer this project does not own).

usage: python toncenter_stub.py PORT_FILE BODIES_DIR MODE [WALLET_KEY_HEX]
MODE: ok | leaving | ratelimit | garbage | other-amount; WALLET_KEY_HEX replaces the wallet's key in
get_public_key. The recorded nominator has a withdrawal requested; every mode but `leaving` answers
as if it had none (its flag -0x1 becomes 0x0).
"""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PORT_FILE, BODIES, MODE = sys.argv[1], sys.argv[2], sys.argv[3]
WALLET_KEY = sys.argv[4] if len(sys.argv) > 4 else None
POOL = "Ef93GHPH-a6l9lfGE4_RWEDHAAS0vIn2EmaY44TWvwpCJ2rD"
PRESENT = "0x2cf55953e92efbeadab7ba725c3f93a0b23f842cbba72d7b8e6f510a70e422e3"


def body(name):
    with open(os.path.join(BODIES, name), "rb") as f:
        return f.read()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, data):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self, payload):
        if self.headers.get("X-API-Key") != "stub-key":
            return self.answer(401, b'{"ok":false,"error":"API key does not exist","code":401}')
        if MODE == "ratelimit":
            return self.answer(429, body("error.429.ratelimit.docs.json"))
        if MODE == "garbage":
            return self.answer(200, b"<html>not json</html>")
        url = urlparse(self.path)
        if url.path == "/api/v2/getAddressInformation":
            address = parse_qs(url.query).get("address", [""])[0]
            name = "getAddressInformation.nominator_pool.json" if address == POOL else "getAddressInformation.uninitialized.json"
            return self.answer(200, body(name))
        if url.path == "/api/v2/runGetMethod":
            request = json.loads(payload or b"{}")
            if request.get("method") == "get_public_key":
                data = body("runGetMethod.get_public_key.json")
                if WALLET_KEY:
                    stack = json.loads(data)["result"]["stack"]
                    data = data.replace(stack[0][1].encode(), ("0x" + WALLET_KEY).encode())
                return self.answer(200, data)
            if request.get("method") != "get_nominator_data":
                return self.answer(200, body("runGetMethod.no_such_method.exit_11.json"))
            arg = (request.get("stack") or [["num", ""]])[0][1]
            if arg != PRESENT:
                return self.answer(200, body("runGetMethod.get_nominator_data.exit_86.json"))
            data = body("runGetMethod.get_nominator_data.json")
            if MODE != "leaving":
                data = data.replace(b'"-0x1"', b'"0x0"')
            if MODE == "other-amount":
                data = data.replace(b"0x12309ce54000", b"0x9184e72a000")
            return self.answer(200, data)
        return self.answer(404, b'{"ok":false,"error":"Not Found","code":404}')

    def do_GET(self):
        self.handle_any(None)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.handle_any(self.rfile.read(length))


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(PORT_FILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(PORT_FILE + ".tmp", PORT_FILE)
server.serve_forever()
