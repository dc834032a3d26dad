"""A toncenter-v2-compatible test server whose accounts run real contract code in the TON VM.

Get-methods run in pytvm's TvmEmulator (the official libemulator); messages to contracts run as
full transactions in its TransactionEmulator, so the nominator pool's own code decides what a
deposit or a withdrawal does to its data. One process serves several endpoints (ports) over one
shared chain; each endpoint can be switched to a failure mode. Built for the tests: the state is
in memory and starts from ../shared/testdata/ton (the real nominator-pool and wallet v4r2 code,
the synthetic pool data of contracts/getters.json).

usage: python toncenter_tvm.py PORT_FILE TESTDATA_TON_DIR ENDPOINTS [API_KEY]
  writes "PORT1 PORT2 ..." to PORT_FILE once listening.

toncenter v2 (each endpoint):
  GET  /api/v2/getAddressInformation?address=A
  POST /api/v2/runGetMethod   {"address", "method", "stack": [["num", "0x.."], ...]}
Control (each endpoint, no API key):
  POST /_test/wallet  {"public_key": HEX, "balance": N}     -> {"address": RAW}   (wallet v4r2)
  POST /_test/message {"from": RAW, "to": RAW, "value": N, "comment": TEXT}
                      -> {"exit_code", "aborted", "seqno"}  (an internal message, run as a transaction)
  POST /_test/mode    {"mode": "ok"|"down"|"ratelimit"|"garbage"}   (this endpoint only)
"""
import base64
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from pytoniq_core import Address, Cell, Slice, begin_cell
from pytoniq_core.tlb import VmStack
from pytvm.transaction_emulator.transaction_emulator import TransactionEmulator
from pytvm.tvm_emulator.tvm_emulator import TvmEmulator
from pytvm.utils import get_method_id

PORT_FILE, TON, ENDPOINTS = sys.argv[1], sys.argv[2], int(sys.argv[3])
API_KEY = sys.argv[4] if len(sys.argv) > 4 else None

GETTERS = json.load(open(os.path.join(TON, "contracts/getters.json")))
POOL_CODE = Cell.one_from_boc(bytes.fromhex(open(os.path.join(TON, "contracts/nominator_pool_code.boc.hex")).read().strip()))
WALLET_CODE = Cell.one_from_boc(bytes.fromhex(open(os.path.join(TON, "contracts/wallet_v4r2_code.boc.hex")).read().strip()))
ERRORS = os.path.join(TON, "toncenter")

lock = threading.Lock()
chain = {"seqno": 46000000, "lt": 47000000000001, "utime": 1750000000}
# raw address -> {"code": Cell|None, "data": Cell|None, "balance": int, "lt": int, "hash": bytes}
accounts = {}
modes = {}


def tick():
    chain["seqno"] += 1
    chain["lt"] += 1000
    chain["utime"] += 5


def add_account(raw, code, data, balance):
    accounts[raw] = {"code": code, "data": data, "balance": balance, "lt": chain["lt"], "hash": bytes(32)}


pool = GETTERS["example_accounts"]["nominator_pool"]
add_account(pool["address_raw"], POOL_CODE, Cell.one_from_boc(bytes.fromhex(pool["data_boc_hex"])), 52_010_000_000_000)


def var_uint7(builder, n):
    length = (n.bit_length() + 7) // 8
    builder.store_uint(length, 3)
    if length:
        builder.store_uint(n, 8 * length)


def shard_account(raw, a):
    """ShardAccount as the emulator's block.tlb (2024) lays it out."""
    state_init = begin_cell().store_bit(0).store_bit(0).store_maybe_ref(a["code"]).store_maybe_ref(a["data"]).store_bit(0).end_cell()
    acc = begin_cell().store_bit(1).store_address(Address(raw))
    for n in (1, 1, 0):  # storage used: cells, bits, public cells (only fees depend on them)
        var_uint7(acc, n)
    acc.store_uint(chain["utime"], 32).store_bit(0)
    acc.store_uint(a["lt"] + 1, 64).store_coins(a["balance"]).store_bit(0)
    acc.store_bit(1).store_slice(state_init.begin_parse())
    return begin_cell().store_ref(acc.end_cell()).store_bytes(a["hash"]).store_uint(a["lt"], 64).end_cell()


def read_shard_account(cell):
    """(balance, code, data, last lt) from the emulator's new ShardAccount."""
    s = cell.refs[0].begin_parse()
    assert s.load_bit() == 1
    s.load_address()
    for _ in range(3):
        length = s.load_uint(3)
        s.load_uint(8 * length) if length else None
    s.load_uint(32)
    if s.load_bit():
        s.load_coins()
    s.load_uint(64)
    balance = s.load_coins()
    s.load_bit()  # extra currencies (none here)
    assert s.load_bit() == 1, "account is no longer active"
    for _ in range(2):
        if s.load_bit():
            s.load_uint(5 if _ == 0 else 2)
    code = s.load_ref() if s.load_bit() else None
    data = s.load_ref() if s.load_bit() else None
    tail = cell.begin_parse()
    tail.load_ref()
    tail.load_bytes(32)
    return balance, code, data, tail.load_uint(64)


def deliver(src, dest, value, comment):
    a = accounts[dest]
    body = begin_cell().store_uint(0, 32).store_snake_string(comment).end_cell()
    msg = begin_cell().store_uint(0, 1).store_bit(1).store_bit(1).store_bit(0)
    msg.store_address(Address(src)).store_address(Address(dest)).store_coins(value).store_bit(0)
    msg.store_coins(0).store_coins(0).store_uint(chain["lt"], 64).store_uint(chain["utime"], 32)
    msg.store_bit(0).store_bit(1).store_ref(body)
    tick()
    emulator = TransactionEmulator()
    emulator.set_unixtime(chain["utime"])
    emulator.set_lt(chain["lt"])
    result = emulator.raw_emulate_transaction(shard_account(dest, a), msg.end_cell())
    if not result.get("success"):
        raise RuntimeError(result.get("error"))
    tx = Cell.one_from_boc(result["transaction"])
    balance, code, data, lt = read_shard_account(Cell.one_from_boc(result["shard_account"]))
    a.update(balance=balance, code=code, data=data, lt=lt, hash=tx.hash)
    if src in accounts:
        accounts[src]["balance"] -= value
    # Value the contract sent out reaches accounts this chain knows (a withdrawal back to a wallet).
    from pytoniq_core.tlb.transaction import OutList
    actions = OutList.deserialize(Slice.one_from_boc(result["actions"])) if result.get("actions") else []
    for action in actions:
        info = getattr(getattr(action, "out_msg", None), "info", None)
        if info is not None and getattr(info, "dest", None) is not None:
            target = info.dest.to_str(is_user_friendly=False)
            if target in accounts:
                accounts[target]["balance"] += info.value.grams
    from pytoniq_core.tlb.transaction import Transaction
    description = Transaction.deserialize(tx.begin_parse()).description
    compute = getattr(description, "compute_ph", None)
    return {"aborted": bool(getattr(description, "aborted", True)), "exit_code": getattr(compute, "exit_code", None),
            "seqno": chain["seqno"], "balance": balance}


def new_wallet(public_key_hex, balance):
    data = begin_cell().store_uint(0, 32).store_uint(698983191, 32).store_bytes(bytes.fromhex(public_key_hex)).store_bit(0).end_cell()
    state_init = begin_cell().store_bit(0).store_bit(0).store_maybe_ref(WALLET_CODE).store_maybe_ref(data).store_bit(0).end_cell()
    raw = "0:" + state_init.hash.hex()
    add_account(raw, WALLET_CODE, data, balance)
    return raw


def boc64(cell):
    return base64.b64encode(cell.to_boc(hash_crc32=True)).decode()


def tonlib_entry(value):
    """An element inside a list or tuple: tonlib objects with decimal numbers."""
    if isinstance(value, int):
        return {"@type": "tvm.stackEntryNumber", "number": {"@type": "tvm.numberDecimal", "number": str(value)}}
    if isinstance(value, (Cell, Slice)):
        cell = value if isinstance(value, Cell) else value.to_cell()
        kind = "tvm.stackEntryCell" if isinstance(value, Cell) else "tvm.stackEntrySlice"
        return {"@type": kind, ("cell" if isinstance(value, Cell) else "slice"): {"@type": "tvm.cell" if isinstance(value, Cell) else "tvm.slice", "bytes": boc64(cell)}}
    if value is None:
        return {"@type": "tvm.stackEntryList", "list": {"@type": "tvm.list", "elements": []}}
    if isinstance(value, list):
        return {"@type": "tvm.stackEntryTuple", "tuple": {"@type": "tvm.tuple", "elements": [tonlib_entry(v) for v in value]}}
    raise ValueError(f"cannot render {type(value)}")


def top_entry(value):
    """A top-level entry of the legacy runGetMethod stack."""
    if isinstance(value, int):
        return ["num", hex(value)]
    if isinstance(value, (Cell, Slice)):
        cell = value if isinstance(value, Cell) else value.to_cell()
        return ["cell", {"bytes": boc64(cell), "object": {}}]
    if value is None:
        return ["list", {"@type": "tvm.list", "elements": []}]
    if isinstance(value, list):
        return ["tuple", {"@type": "tvm.tuple", "elements": [tonlib_entry(v) for v in value]}]
    raise ValueError(f"cannot render {type(value)}")


def block_id():
    return {"@type": "ton.blockIdExt", "workchain": -1, "shard": "-9223372036854775808", "seqno": chain["seqno"],
            "root_hash": base64.b64encode(chain["seqno"].to_bytes(32, "big")).decode(), "file_hash": base64.b64encode(bytes(32)).decode()}


def normalize(address):
    return Address(address).to_str(is_user_friendly=False)


def address_information(address):
    raw = normalize(address)
    a = accounts.get(raw)
    result = {"@type": "raw.fullAccountState", "balance": str(a["balance"]) if a else 0, "extra_currencies": [],
              "code": boc64(a["code"]) if a and a["code"] else "", "data": boc64(a["data"]) if a and a["data"] else "",
              "last_transaction_id": {"@type": "internal.transactionId", "lt": str(a["lt"] if a else 0),
                                      "hash": base64.b64encode(a["hash"] if a else bytes(32)).decode()},
              "block_id": block_id(), "frozen_hash": "", "sync_utime": chain["utime"],
              "@extra": f"{chain['utime']}.0:0:0.5", "state": "active" if a and a["code"] else "uninitialized"}
    return {"ok": True, "result": result}


def run_get_method(request):
    raw = normalize(request["address"])
    a = accounts.get(raw)
    if a is None or a["code"] is None:
        return {"ok": True, "result": {"@type": "smc.runResult", "gas_used": 0, "stack": [], "exit_code": -13,
                                       "block_id": block_id(), "@extra": "0:0:0"}}
    args = []
    for kind, value in request.get("stack") or []:
        if kind != "num":
            raise ValueError("only num arguments")
        args.append(int(value, 16) if value.lstrip("-").startswith("0x") else int(value))
    emulator = TvmEmulator(a["code"], a["data"])
    result = emulator.raw_run_get_method(get_method_id(request["method"]), VmStack.serialize(args))
    entries = VmStack.deserialize(Slice.one_from_boc(base64.b64decode(result["stack"])))
    return {"ok": True, "result": {"@type": "smc.runResult", "gas_used": int(result["gas_used"]),
                                   "stack": [top_entry(e) for e in entries], "exit_code": int(result["vm_exit_code"]),
                                   "block_id": block_id(), "@extra": "0:0:0"}}


def recorded(name):
    with open(os.path.join(ERRORS, name), "rb") as f:
        return f.read()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, data):
        if isinstance(data, dict):
            data = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self, payload):
        url = urlparse(self.path)
        port = self.server.server_address[1]
        try:
            if url.path.startswith("/_test/"):
                request = json.loads(payload or b"{}")
                with lock:
                    if url.path == "/_test/mode":
                        modes[port] = request["mode"]
                        return self.answer(200, {"ok": True})
                    if url.path == "/_test/wallet":
                        return self.answer(200, {"address": new_wallet(request["public_key"], int(request.get("balance", 0)))})
                    if url.path == "/_test/message":
                        return self.answer(200, deliver(normalize(request["from"]), normalize(request["to"]), int(request["value"]), request["comment"]))
                return self.answer(404, {"ok": False})
            mode = modes.get(port, "ok")
            if mode == "down":
                return self.answer(503, recorded("error.503.no_liteservers.json"))
            if mode == "ratelimit":
                return self.answer(429, recorded("error.429.ratelimit.docs.json"))
            if mode == "garbage":
                return self.answer(200, b'{"ok": true, "result": {"balance": [}')
            if API_KEY and self.headers.get("X-API-Key") != API_KEY:
                return self.answer(401, {"ok": False, "error": "API key does not exist", "code": 401})
            with lock:
                if url.path == "/api/v2/getAddressInformation":
                    return self.answer(200, address_information(parse_qs(url.query)["address"][0]))
                if url.path == "/api/v2/runGetMethod":
                    return self.answer(200, run_get_method(json.loads(payload or b"{}")))
            return self.answer(404, {"ok": False, "error": "Not Found", "code": 404})
        except Exception as error:  # a test server: report, do not die
            return self.answer(500, {"ok": False, "error": f"{type(error).__name__}: {error}", "code": 500})

    def do_GET(self):
        self.handle_any(None)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.handle_any(self.rfile.read(length))


servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(ENDPOINTS)]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
with open(PORT_FILE + ".tmp", "w") as f:
    f.write(" ".join(str(s.server_address[1]) for s in servers))
os.rename(PORT_FILE + ".tmp", PORT_FILE)
servers[0].serve_forever()
