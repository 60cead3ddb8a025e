"""The SRP-6a password login (``USER_LOGIN_START`` / ``USER_LOGIN_PROOF``, PROTOCOL-EXTENSIONS §4)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from socp_tw import wire
from socp_tw.auth.errors import CorruptKeystore, LoginError
from socp_tw.services.users.state import LOGIN_TTL, _LoginFailed, _PendingLogin, _srp_challenge, _UserLink


class _Login:
    """Login for :class:`UserSide`: the challenge on the workers, one proof per challenge, the limiter."""

    def _login_start(self, state: _UserLink, envelope: wire.Envelope) -> Deferred | None:
        self._spend_attempt(state)
        state.login = None  # a new start replaces the pending attempt
        user_id = wire.require_uuid(envelope.payload, "user_id")
        a_pub = wire.require_str(envelope.payload, "A", max_len=1024)
        self._same_from(envelope, user_id)
        wait = self.limiter.retry_after(user_id)
        if wait:
            self.counters["login_rate_limited"] += 1
            raise wire.RateLimited(f"retry after {wait} s")
        d = self._store.get_user(user_id)
        d.addCallback(self._login_user_loaded, state, user_id, a_pub)
        return d

    def _login_user_loaded(self, row: dict | None, state: _UserLink, user_id: str, a_pub: str):
        if row is None or not row.get("pake_password"):
            self.send_error(
                state.link,
                "USER_NOT_FOUND",
                f"no user {user_id} is registered on this server",
                ref="USER_LOGIN_START",
                to=user_id,
                user_id=user_id,
            )
            return None
        d = self._workers.run(_srp_challenge, row["pake_password"], a_pub)
        d.addCallbacks(
            self._login_challenged,
            self._login_challenge_failed,
            callbackArgs=(state, user_id, row["privkey_store"]),
            errbackArgs=(user_id,),
        )
        return d

    def _login_challenged(self, result, state: _UserLink, user_id: str, privkey_store: str) -> None:
        srp, challenge = result
        if state.closed:
            return
        state.login = _PendingLogin(user_id, srp, privkey_store, self._now() + LOGIN_TTL)
        self._send(state.link, "USER_LOGIN_CHALLENGE", user_id, {"user_id": user_id, **challenge})

    def _login_challenge_failed(self, failure: Failure, user_id: str) -> None:
        if failure.check(CorruptKeystore):
            self._log.error(
                "Stored verifier of user {user} is unusable: {why}", user=user_id, why=str(failure.value)
            )
            raise _LoginFailed("this account's stored verifier is unusable; contact the server operator")
        failure.trap(LoginError)
        raise _LoginFailed(f"bad A: {failure.value}")

    def _login_proof(self, state: _UserLink, envelope: wire.Envelope) -> None:
        pending, state.login = state.login, None  # one proof per challenge, whatever the outcome
        user_id = wire.require_uuid(envelope.payload, "user_id")
        m1 = wire.require_str(envelope.payload, "M1", max_len=1024)
        if pending is None or pending.user_id != user_id:
            raise _LoginFailed("no login attempt in progress for this user id: send USER_LOGIN_START")
        if self._now() > pending.expires:
            raise _LoginFailed("the login attempt expired: send USER_LOGIN_START again")
        wait = self.limiter.retry_after(user_id)
        if wait:  # locked by failures elsewhere since this attempt started
            self.counters["login_rate_limited"] += 1
            raise wire.RateLimited(f"retry after {wait} s")
        try:
            m2 = pending.srp.verify(m1)
        except LoginError:
            failures, lock = self.limiter.failure(user_id)
            self.counters["login_failed"] += 1
            self._log.info(
                "Failed login for user {user} from {peer} ({failures} in a row, locked {lock} s)",
                user=user_id,
                peer=state.link.peer,
                failures=failures,
                lock=lock,
            )
            raise _LoginFailed("wrong password") from None
        self.limiter.success(user_id)
        self.counters["login_ok"] += 1
        self._log.info("User {user} logged in with password from {peer}", user=user_id, peer=state.link.peer)
        nonce = self._issue_nonce(state)
        self._send(
            state.link,
            "USER_LOGIN_OK",
            user_id,
            {"user_id": user_id, "M2": m2, "privkey_store": pending.privkey_store, "nonce": nonce},
        )
