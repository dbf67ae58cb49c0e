"""The queen renews its own certificate in the last third of its life, in place."""

from __future__ import annotations

import time
from pathlib import Path

from rbee.clients import use_identity
from rbee.pki import LEAF_DAYS, Identity, write_private
from rbee.queen.control.renewal import Renewals
from tests.fixtures.pki import authority


def test_the_queen_renews_its_own_certificate_when_due(tmp_path: Path) -> None:
    bundle = authority().issue("queen", "queen", ["127.0.0.1"], days=LEAF_DAYS - 1)
    identity = Identity(write_private(tmp_path / "queen.pem", bundle))
    use_identity(identity, authority())
    issued = identity.expires_at
    now = time.time()
    clock = [now + 1 * 86400]
    renewals = Renewals(identity, ["127.0.0.1"], clock=lambda: clock[0])
    assert not renewals.own()
    assert identity.expires_at == issued
    clock[0] = now + 4 * 86400  # less than a third of its life left
    assert renewals.own()
    assert identity.expires_at > issued + 86000  # a new one, a whole LEAF_DAYS long
    assert (tmp_path / "queen.pem").read_bytes() != bundle
