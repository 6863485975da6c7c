"""The other side of tests/cobblestone.rs: pyca/cryptography's Cobblestone-256.

Reads a JSON document on stdin: {"open": [{key, context, message, plaintext}],
"seal": [{key, context, plaintext}]} (hex strings). Opens every cmek-sealed message and checks
its plaintext; seals every plaintext and prints {"sealed": [hex, ...]} for cmek to open.
"""
import json
import sys

from cryptography.cobblestone import Cobblestone256Decryptor, Cobblestone256Encryptor

job = json.load(sys.stdin)
for case in job["open"]:
    dec = Cobblestone256Decryptor(bytes.fromhex(case["key"]), bytes.fromhex(case["context"]))
    message = bytes.fromhex(case["message"])
    # Feed it in uneven pieces, as a stream would arrive.
    out = b"".join(dec.update(message[i : i + 5000]) for i in range(0, len(message), 5000))
    out += dec.finalize()
    if out != bytes.fromhex(case["plaintext"]):
        sys.exit(f"pyca opened a {len(message)}-byte cmek message to the wrong plaintext")
sealed = []
for case in job["seal"]:
    enc = Cobblestone256Encryptor(bytes.fromhex(case["key"]), bytes.fromhex(case["context"]))
    plaintext = bytes.fromhex(case["plaintext"])
    sealed.append((enc.update(plaintext) + enc.finalize()).hex())
json.dump({"sealed": sealed}, sys.stdout)
