"""User ids under QUEUEFLOW_USER_ID_KEY: the keyed hash that replaces a raw id before the event
enters the stream (ingest), and that `queueflow forget` applies to the id it is given.

The hash is the lowercase hex HMAC-SHA256 of `site_id + "\\n" + user_id` under the key, cut to
32 characters (128 bits: no collision among any realistic number of visitors, so unique
counts stay exact). The site is part of the message: one visitor on two sites gets two
unrelated ids, and a leaked hash says nothing about another site.
"""

from __future__ import annotations

import hmac
from hashlib import sha256

HASH_CHARS = 32


class UserIdHasher:
    def __init__(self, key: str) -> None:
        # The keyed state is made once; each id copies it (cheaper than a new HMAC per id).
        self._base = hmac.new(key.encode(), digestmod=sha256)

    def __call__(self, site_id: str, user_id: str) -> str:
        mac = self._base.copy()
        mac.update(f"{site_id}\n{user_id}".encode())
        return mac.hexdigest()[:HASH_CHARS]
