"""Writes a random corpus with pytoniq-core, the independent implementation TONKit is checked
against: cells (as bags of cells, with and without CRC32C, with their hashes and depths) and
addresses (raw and every user-friendly variant). One JSON object per line.

usage: python pytoniq_corpus.py SEED CELLS ADDRESSES
"""
import json
import random
import sys

from pytoniq_core import Address, Builder


def main():
    seed, cells, addresses = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    pool = []
    for i in range(cells):
        b = Builder()
        nbits = rng.choice([0, 1, 7, 8, 9, 31, 64, 255, 256, 1000, 1023, rng.randint(0, 1023)])
        if nbits:
            b.store_uint(rng.getrandbits(nbits), nbits)
        nrefs = rng.randint(0, min(4, len(pool)))
        for _ in range(nrefs):
            # Any earlier cell: subgraphs are shared between cells and inside one.
            j = rng.randrange(len(pool))
            b.store_ref(pool[j])
        cell = b.end_cell()
        # A bounded pool of shallow cells: DAGs with sharing, depths well under the limit.
        if cell.get_depth(0) < 8:
            pool.append(cell)
        if len(pool) > 400:
            pool.pop(rng.randrange(len(pool) - 1))
        crc = rng.random() < 0.5
        boc = cell.to_boc(hash_crc32=crc)
        print(json.dumps({"kind": "cell", "boc": boc.hex(), "crc": crc, "hash": cell.hash.hex(),
                          "depth": cell.get_depth(0), "bits": len(cell.bits), "refs": len(cell.refs)}))
    for i in range(addresses):
        wc = rng.choice([0, -1, 0, -1, rng.randint(-128, 127)])
        h = bytes(rng.getrandbits(8) for _ in range(32))
        a = Address((wc, h))
        forms = []
        for bounceable in (True, False):
            for testnet in (False, True):
                for url_safe in (True, False):
                    forms.append({"address": a.to_str(is_user_friendly=True, is_url_safe=url_safe, is_bounceable=bounceable,
                                                      is_test_only=testnet),
                                  "bounceable": bounceable, "testnet": testnet, "url_safe": url_safe})
        print(json.dumps({"kind": "address", "raw": a.to_str(is_user_friendly=False), "workchain": wc, "hash": h.hex(),
                          "friendly": forms}))


if __name__ == "__main__":
    main()
