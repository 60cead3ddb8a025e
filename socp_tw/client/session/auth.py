"""``/register`` and ``/login``: SRP, the sealed key, the hello with its proof, the server key's
pin, and the login again after a reconnect."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from twisted.internet.defer import Deferred, succeed

from socp_tw import __version__, crypto, wire
from socp_tw.auth.errors import CorruptKeystore, KeystoreError, LoginError, WrongPassword
from socp_tw.auth.hello import hello_proof_preimage
from socp_tw.auth.login import SrpClient
from socp_tw.auth.scrypt import ScryptParams
from socp_tw.auth.sealing import open_private_key, seal_private_key
from socp_tw.auth.verifier import make_verifier
from socp_tw.client.pins import CHANGED, NEW
from socp_tw.client.session.core import NotConnected, RequestFailed, ServerError, SessionCore
from socp_tw.client.text import printable
from socp_tw.logs import get_logger
from socp_tw.usernames import clean_name

_log = get_logger("socp_tw.client.session")

CLIENT_NAME = f"socp-tw/{__version__}"
MIN_PASSWORD_CHARS = 8
MAX_RELOGIN_FAILURES = 5


def _seal(key: RSAPrivateKey, password: str, user_id: str, params: ScryptParams) -> tuple[str, str]:
    return (
        seal_private_key(key, password, params=params),
        make_verifier(user_id, password, params=params),
    )


class Authentication(SessionCore):
    """Register, log in, and stay logged in across reconnects."""

    def _password(self, prompt: str) -> Deferred:
        if self._file_password is not None:
            return succeed(self._file_password)
        return self.ui.ask_password(prompt)

    def _passwords_not_asked(self, count: int = 1) -> None:
        """A command ends without its ``count`` password prompts: tell the ui, whose script may
        carry the answers (``Console.passwords_not_asked``).  Nothing with ``--password-file``."""
        skip = getattr(self.ui, "passwords_not_asked", None)
        if self._file_password is None and skip is not None:
            skip(count)

    def register(self) -> Deferred:
        """``/register``: new id and key, sealed with a password, registered, then logged in."""
        return Deferred.fromCoroutine(self._register()).addErrback(self._internal_error)

    async def _register(self) -> None:
        if self._want_online:
            self.show(f"[REGISTER FAILED] already logged in as {self.user_id}; /quit first")
            return self._passwords_not_asked(2)
        if self._auth_busy:
            self.show("[REGISTER FAILED] a login is already in progress")
            return self._passwords_not_asked(2)
        if not await self._wait_until(lambda: self._sender is not None, self._reply_timeout):
            self.show(f"[REGISTER FAILED] not connected to {self.server_url}; try again later")
            return self._passwords_not_asked(2)
        self._auth_busy = True
        keygen = self._workers.run(self._key_factory)
        try:
            user_id = wire.new_uuid4()
            self.show(f"Your new user id: {user_id}  (keep it: /login needs it)")
            try:
                first = await self._password("Password: ")
                if len(first) < MIN_PASSWORD_CHARS:  # refused before the repeat prompt
                    self.show(
                        f"[REGISTER FAILED] the password must have at least {MIN_PASSWORD_CHARS} characters"
                    )
                    return self._passwords_not_asked(1)
                second = await self._password("Repeat password: ")
            except Exception as e:
                self.show(f"[REGISTER FAILED] no password given ({e})")
                return
            if first != second:
                self.show("[REGISTER FAILED] the passwords do not match")
                return
            self.show("Generating your key and sealing it with your password...")
            key = await keygen
            privkey_store, verifier = await self._workers.run(_seal, key, first, user_id, self._scrypt_params)
            del first, second
            payload = {
                "user_id": user_id,
                "pubkey": crypto.encode_public_key(key),
                "privkey_store": privkey_store,
                "pake_password": verifier,
            }
            acked = self._expect(
                "ACK", "USER_REGISTER", match=lambda e: e.payload.get("msg_ref") == "USER_REGISTER"
            )
            self._send("USER_REGISTER", self.server_id or "*", payload, key=key, from_=user_id)
            try:
                await acked
            except (ServerError, RequestFailed) as e:
                self.show(f"[REGISTER FAILED] {printable(str(e))}")
                return
            _log.info("Registered user {user_id}", user_id=user_id)
            self.show(f"[REGISTER SUCCESS] {user_id}")
            await self._login_with_key(user_id, key, None, None)
        finally:
            keygen.addErrback(lambda failure: None)
            self._auth_busy = False

    def login(self, user_id: str) -> Deferred:
        """``/login <user_uuid>``: SRP with the password, open the key store, hello with a proof."""
        return Deferred.fromCoroutine(self._login(user_id)).addErrback(self._internal_error)

    async def _login(self, user_id: str) -> None:
        if self._want_online and user_id == self.user_id and await self._still_logged_in():
            return
        if self._want_online:
            self.show(f"[ERROR] already logged in as {self.user_id}; /quit first to log in as another user")
            return self._passwords_not_asked()
        if self._auth_busy:
            self.show("[LOGIN FAILED] a login is already in progress")
            return self._passwords_not_asked()
        if not await self._wait_until(lambda: self._sender is not None, self._reply_timeout):
            self.show(f"[LOGIN FAILED] not connected to {self.server_url}; try again later")
            return self._passwords_not_asked()
        self._auth_busy = True
        try:
            try:
                password = await self._password("Password: ")
            except Exception as e:
                self.show(f"[LOGIN FAILED] no password given ({e})")
                return
            try:
                key, nonce, server_id = await self._srp_login(user_id, password)
            except (ServerError, RequestFailed, KeystoreError, wire.FrameError) as e:
                self.show(f"[LOGIN FAILED] {printable(str(e))}")
                return
            finally:
                del password
            await self._login_with_key(user_id, key, nonce, server_id)
        finally:
            self._auth_busy = False

    async def _still_logged_in(self) -> bool:
        """``/login`` of the user we are logged in as (``/register`` then ``/login``, as the
        integration guide has it): no password, just ``[LOGIN SUCCESS]`` once the session is
        online (after a reconnect's automatic login, if one is under way).  False (nothing
        shown) if that automatic login gave up meanwhile: then this is an ordinary login."""
        if not self.logged_in:
            await self._wait_until(lambda: self.logged_in or not self._want_online, self._reply_timeout)
        if not self._want_online:
            return False
        if self.logged_in:
            self.show(f"[LOGIN SUCCESS] {self.user_id}")
        else:
            self.show(
                f"[LOGIN FAILED] not connected to {self.server_url} right now (reconnecting); "
                "try again shortly"
            )
        self._passwords_not_asked()
        return True

    async def _srp_login(self, user_id: str, password: str) -> tuple[RSAPrivateKey, str, str]:
        try:
            srp = await self._workers.run(SrpClient, user_id, password)
        except LoginError as e:
            raise RequestFailed(str(e)) from None
        challenge_d = self._expect("USER_LOGIN_CHALLENGE", "USER_LOGIN_START")
        self._send(
            "USER_LOGIN_START",
            self.server_id or "*",
            {"user_id": user_id, "A": srp.start()},
            from_=user_id,
            sign=False,
        )
        challenge = await challenge_d
        if challenge.payload.get("user_id", user_id) != user_id:
            raise RequestFailed("the server's challenge is for another user")
        generation = self._generation
        try:
            m1 = await self._workers.run(srp.process_challenge, challenge.payload)
        except LoginError as e:
            raise RequestFailed(f"the server's challenge is invalid ({e})") from None
        self._same_link(generation)
        ok_d = self._expect("USER_LOGIN_OK", "USER_LOGIN_PROOF")
        self._send(
            "USER_LOGIN_PROOF",
            challenge.from_ if wire.is_uuid(challenge.from_) else "*",
            {"user_id": user_id, "M1": m1},
            from_=user_id,
            sign=False,
        )
        ok = await ok_d
        if not srp.verify_server(ok.payload.get("M2")):
            self._count("bad_m2")
            if self._link is not None:
                self._link.close(1000, "server proof M2 is wrong")
            raise RequestFailed(
                "the server could not prove it knows your password verifier (M2 mismatch): "
                "it may be an impostor; disconnected"
            )
        blob = wire.require_str(ok.payload, "privkey_store", max_len=64 * 1024)
        nonce = wire.require_str(ok.payload, "nonce", max_len=256)
        try:
            key = await self._workers.run(open_private_key, blob, password)
        except WrongPassword:
            raise RequestFailed("your key store does not open with this password") from None
        except CorruptKeystore as e:
            raise RequestFailed(f"the server sent a corrupt key store ({e})") from None
        self._same_link(generation)
        return key, nonce, ok.from_

    async def _login_with_key(
        self, user_id: str, key: RSAPrivateKey, nonce: str | None, server_id: str | None
    ) -> bool:
        try:
            await self._hello(user_id, key, nonce, server_id)
        except (ServerError, RequestFailed, KeystoreError, wire.FrameError) as e:
            self.show(f"[LOGIN FAILED] {printable(str(e))}")
            return False
        _log.info("Logged in as {user_id}", user_id=user_id)
        self.show(f"[LOGIN SUCCESS] {user_id}")
        return True

    async def _hello(
        self, user_id: str, key: RSAPrivateKey, nonce: str | None, server_id: str | None
    ) -> None:
        """USER_HELLO_CHALLENGE (unless a nonce is at hand) → USER_HELLO with proof → ACK."""
        if nonce is None:
            nonce_d = self._expect("USER_HELLO_NONCE", "USER_HELLO_CHALLENGE")
            self._send("USER_HELLO_CHALLENGE", self.server_id or "*", {}, key=key, from_=user_id)
            try:
                answer = await nonce_d
            except ServerError as e:
                if e.code != "UNKNOWN_TYPE":
                    raise
                answer = None  # a server without our extensions: plain hello, TOFU (EXTENSIONS §6.3)
            if answer is not None:
                nonce = wire.require_str(answer.payload, "nonce", max_len=256)
                server_id = answer.payload.get("server_id")
                if not wire.is_uuid(server_id):
                    server_id = answer.from_
        pub = crypto.encode_public_key(key)
        payload: dict[str, Any] = {"client": CLIENT_NAME, "pubkey": pub, "enc_pubkey": pub}
        # Presence only of the users we follow, the channel once we use it, rather than a frame
        # per login anywhere: our server's extension (docs/MESH.md); other servers ignore it.
        payload["presence"] = "follow"
        if nonce is not None:
            preimage = hello_proof_preimage(nonce, user_id, server_id or "")
            payload["nonce"] = nonce
            generation = self._generation
            payload["proof"] = await self._workers.run(crypto.pss_sign, key, preimage)
            self._same_link(generation)
        acked = self._expect("ACK", "USER_HELLO", match=lambda e: e.payload.get("msg_ref") == "USER_HELLO")
        self._send("USER_HELLO", server_id or self.server_id or "*", payload, key=key, from_=user_id)
        ack = await acked
        self._accept_server_key(ack)
        self.user_id, self._key, self._pub = user_id, key, pub
        self.my_name = clean_name(ack.payload.get("name"))  # our /nick, as the server keeps it
        self.logged_in = True
        self._want_online = True
        self._relogin_failures = 0
        self._follow(self.names.talked | set(self.pins.petnames()))
        self._changed()

    def _accept_server_key(self, ack: wire.Envelope) -> None:
        """Check the hello ACK (self-signed by ``server_pub``) and pin that key per server URL."""
        server_id = ack.payload.get("server_id", ack.from_)
        server_pub = ack.payload.get("server_pub")
        if not wire.is_uuid(server_id) or not isinstance(server_pub, str):
            raise RequestFailed("the server's hello ACK lacks a valid server_id or server_pub")
        try:
            key = crypto.load_public_key(server_pub)
        except crypto.BadKey as e:
            raise RequestFailed(f"the server's key is unusable ({e.detail})") from None
        if not crypto.verify_payload(key, ack.payload, ack.sig):
            raise RequestFailed("the server's hello ACK is not signed by the key it names")
        check = self.pins.check_server(self.server_url, server_pub)
        if check.status == CHANGED:
            self._want_online = False
            self._changed()
            self.show(
                f"[WARNING] !!! THE KEY OF SERVER {self.server_url} HAS CHANGED !!!\n"
                f"  pinned [{check.pinned_fingerprint}], now [{check.fingerprint}].\n"
                f"  Someone may be intercepting your connection. Refusing to continue. If the operator\n"
                f"  really replaced the server key, remove {self.server_url} from {self.pins.path}"
            )
            if self._link is not None:
                self._link.close(1000, "server key changed")
            raise RequestFailed("the server key changed (see the warning above)")
        if check.status == NEW or self.pins.server(self.server_url)[0] != server_id:
            fp = self.pins.pin_server(self.server_url, server_id, server_pub)
            if check.status == NEW:
                self.show(f"[KEY] pinned the key of server {self.server_url} [{fp}] (first use)")
        self.server_id = server_id
        self._server_key = key

    def _pinned_key_warning(self, frame_type: str) -> None:
        fp = crypto.fingerprint(self._server_key) if self._server_key is not None else "?"
        self.show(
            f"[WARNING] !!! {frame_type} IS NOT SIGNED BY THE KEY PINNED FOR SERVER {self.server_url} "
            f"[{fp}] !!!\n"
            f"  The server key may have changed, or someone is intercepting your connection.\n"
            f"  If the operator really replaced the server key, remove {self.server_url}\n"
            f"  from {self.pins.path}"
        )

    async def _relogin(self) -> None:
        """After a reconnect: hello again with the key held in memory (no password needed)."""
        user_id, key = self.user_id, self._key
        if user_id is None or key is None:
            return
        self._auth_busy = True
        try:
            while True:
                generation = self._generation
                try:
                    await self._hello(user_id, key, None, None)
                    break
                except NotConnected:
                    # The link went away; if a new one opened meanwhile (its connection_made
                    # saw us busy), log in on it now, else its connection_made will start us.
                    if self._generation == generation or self._sender is None or not self._want_online:
                        return
        except (ServerError, RequestFailed, KeystoreError, wire.FrameError) as e:
            self._relogin_failures += 1
            if not self._want_online:  # e.g. the server key changed: already reported
                return
            if self._relogin_failures >= MAX_RELOGIN_FAILURES:
                self._want_online = False
                self._changed()
                self.show(
                    f"[ERROR] could not log in again as {user_id} ({printable(str(e))}); "
                    f"giving up: use /login {user_id}"
                )
                return
            self.show(f"[ERROR] could not log in again as {user_id} ({printable(str(e))}); will retry")
            if self._link is not None:
                self._link.close(1000, "login after reconnect failed; retrying")
            return
        finally:
            self._auth_busy = False
        _log.info("Logged in again as {user_id} after reconnecting", user_id=user_id)
        self._outage = False
        self.show(f"[RECONNECTED] logged in again as {user_id}")
