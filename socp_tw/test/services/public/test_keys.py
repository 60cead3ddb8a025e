"""Group-key crypto: key parts are signed by the creator and unwrap to one key."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto
from socp_tw.identity import ServerIdentity
from socp_tw.services.public import (
    make_key_parts,
)
from socp_tw.services.public.keys import KeyNotWanted
from socp_tw.signer import FrameSigner
from socp_tw.test.keys import test_key
from socp_tw.test.services.public.sim import (
    ALICE,
    BOB,
    CAROL,
    A,
    user_key,
    user_pub,
)
from socp_tw.testing import SynchronousWorkers


class KeyPartsTests(SynchronousTestCase):
    def test_parts_are_signed_and_unwrap(self) -> None:
        creator = test_key(0)
        creator_pub = crypto.encode_public_key(creator)
        signer = FrameSigner(ServerIdentity(A, creator, creator_pub), SynchronousWorkers())
        members = [(ALICE, user_pub(ALICE)), (BOB, user_pub(BOB)), (CAROL, user_pub(CAROL))]
        parts = make_key_parts(signer.sign_content_now, creator_pub, members, 2)
        self.assertEqual([len(p["shares"]) for p in parts], [2, 1])
        keys = set()
        for part in parts:
            preimage = crypto.keyshare_preimage(part["shares"], creator_pub)
            self.assertTrue(crypto.verify_content_sig(creator, preimage, part["content_sig"]))
            for share in part["shares"]:
                keys.add(crypto.oaep_decrypt(user_key(share["member"]), share["wrapped_public_channel_key"]))
        self.assertEqual(len(keys), 1)
        self.assertEqual(len(keys.pop()), 32)
        again = make_key_parts(signer.sign_content_now, creator_pub, members[:1], 2)
        fresh = crypto.oaep_decrypt(user_key(ALICE), again[0]["shares"][0]["wrapped_public_channel_key"])
        self.assertNotIn(fresh, keys)

    def test_a_key_no_longer_wanted_stops_at_the_next_part(self) -> None:
        creator = test_key(0)
        creator_pub = crypto.encode_public_key(creator)
        signed: list[bytes] = []

        def sign(preimage: bytes) -> str:
            signed.append(preimage)
            return "sig"

        answers = iter([True, False])
        members = [(ALICE, user_pub(ALICE)), (BOB, user_pub(BOB)), (CAROL, user_pub(CAROL))]
        with self.assertRaises(KeyNotWanted):
            make_key_parts(sign, creator_pub, members, 2, still_wanted=lambda: next(answers))
        self.assertEqual(len(signed), 1)  # the first part only
