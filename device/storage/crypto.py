"""Per-clip encryption at rest (AES-256-GCM) so that deleting a key erases the clip (NIST SP 800-88
cryptographic erase: on flash, overwriting a file does not reach the old blocks).

A clip file is MAGIC | nonce | AES-GCM(key, header-length | header JSON | WAV), authenticated with the
clip id, so a file cannot be swapped for another clip's. The header carries the clip's metadata, so
the index can be rebuilt from the files (with the key store) if it is ever lost.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"ERC1"
NONCE_BYTES = 12
HEADER_LEN_BYTES = 4


class TamperedError(ValueError):
    """The clip does not authenticate: truncated, bit-flipped, or not this clip's file."""


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def seal(key: bytes, clip_id: str, meta: dict[str, Any], audio: bytes) -> bytes:
    header = json.dumps(meta, ensure_ascii=False).encode()
    payload = len(header).to_bytes(HEADER_LEN_BYTES, "big") + header + audio
    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, payload, MAGIC + clip_id.encode())


def unseal(key: bytes, clip_id: str, blob: bytes) -> tuple[dict[str, Any], bytes]:
    if len(blob) < len(MAGIC) + NONCE_BYTES + 16 or not blob.startswith(MAGIC):
        raise TamperedError(f"clip {clip_id} is not an edge-recorder clip file")
    nonce = blob[len(MAGIC):len(MAGIC) + NONCE_BYTES]
    try:
        payload = AESGCM(key).decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES:], MAGIC + clip_id.encode())
    except InvalidTag:
        raise TamperedError(f"clip {clip_id} failed authentication (tampered or truncated)") from None
    size = int.from_bytes(payload[:HEADER_LEN_BYTES], "big")
    header = payload[HEADER_LEN_BYTES:HEADER_LEN_BYTES + size]
    return json.loads(header), payload[HEADER_LEN_BYTES + size:]


def seal_text(key: bytes, clip_id: str, text: str | None) -> bytes | None:
    """For the index's transcript column: the same key, bound to the clip and the field."""
    if text is None:
        return None
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, text.encode(), f"{clip_id}/transcript".encode())


def unseal_text(key: bytes, clip_id: str, blob: bytes | None) -> str | None:
    if blob is None:
        return None
    try:
        plain = AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], f"{clip_id}/transcript".encode())
    except InvalidTag:
        raise TamperedError(f"the transcript of clip {clip_id} failed authentication") from None
    return plain.decode()
