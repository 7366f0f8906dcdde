"""The keyed user-id hash is exactly DESIGN.md's: hex HMAC-SHA256 of site + newline + id."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from queueflow.core.user_ids import UserIdHasher

KEY = "a-secret-of-sixteen-chars"


@given(site=st.text(min_size=1, max_size=50), user=st.text(min_size=1, max_size=50))
def test_the_hash_is_the_documented_hmac(site: str, user: str) -> None:
    expected = hmac.new(KEY.encode(), f"{site}\n{user}".encode(), hashlib.sha256).hexdigest()
    assert UserIdHasher(KEY)(site, user) == expected[:32]


def test_the_same_visitor_on_two_sites_or_under_two_keys_is_unrelated() -> None:
    hasher = UserIdHasher(KEY)
    assert hasher("a.example", "u1") == hasher("a.example", "u1")
    assert hasher("a.example", "u1") != hasher("b.example", "u1")
    assert hasher("a.example", "u1") != UserIdHasher(KEY + "x")("a.example", "u1")
    # The newline separates: ("a", "b\nc") and ("a\nb", "c") cannot both be sent (no control
    # characters in either field), so no two valid pairs share a message.
    digest = hasher("a.example", "u1")
    assert len(digest) == 32 and digest == digest.lower() and int(digest, 16) >= 0
