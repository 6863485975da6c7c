"""Decodes tests/data/stream_vectors.json from docs/FORMAT.md alone, with pyca/cryptography:
HKDF-SHA256 for the stream input key, SHA-256 for the binding digest, and pyca's own
Cobblestone-256 for the body. Exits non-zero on the first vector it cannot reproduce."""
import hashlib
import json
import sys

from cryptography.cobblestone import Cobblestone256Decryptor
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def record_fields(record):
    """The DEK record fields after the preamble and DEK id: compartment, commitment, length."""
    pos = 20
    compartment = record[pos + 1 : pos + 1 + record[pos]]
    pos += 1 + record[pos]
    pos += 1 + record[pos]  # key configuration id
    pos += 1  # provider
    pos += 2 + int.from_bytes(record[pos : pos + 2], "big")  # backend key id
    pos += 1 + record[pos]  # backend key version
    commitment = record[pos : pos + 32]
    pos += 32
    pos += 2 + int.from_bytes(record[pos : pos + 2], "big")  # wrapped DEK
    return compartment, commitment, pos


vectors = json.load(open(sys.argv[1]))["vectors"]
for v in vectors:
    dek, record = bytes.fromhex(v["dek"]), bytes.fromhex(v["dek_record"])
    envelope, aad = bytes.fromhex(v["envelope"]), bytes.fromhex(v["aad"])
    suite, dek_id = record[3], record[4:20]
    salt = b"cmek/v1" + bytes([suite]) + dek_id
    stream_key = HKDF(hashes.SHA256(), 32, salt, b"cmek/v1 stream input key").derive(dek)
    compartment, commitment, record_len = record_fields(record)
    form = envelope[2]
    if form == 0x05:
        header_len = 20
        binding = hashlib.sha256(
            envelope[:20] + bytes([len(compartment)]) + compartment + commitment
        ).digest()
    elif form == 0x04:
        header_len = record_len  # the record's fields, inline
        binding = hashlib.sha256(envelope[:header_len]).digest()
    else:
        sys.exit(f"{v['name']}: unexpected form {form:#x}")
    dec = Cobblestone256Decryptor(stream_key, binding + aad)
    plaintext = dec.update(envelope[header_len:]) + dec.finalize()
    if plaintext.hex() != v["plaintext"]:
        sys.exit(f"{v['name']}: decoded to another plaintext")
print(f"decoded {len(vectors)} streamed vectors")
