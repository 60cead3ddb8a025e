"""The protocol logic of ``socp-client``: register, log in, list, send and receive DMs.

:class:`ClientSession` is independent of the transport: the connection layer hands it
a *link* (anything with ``send(bytes)`` and ``close(code, reason)``) and the parsed
frames it receives; the console calls its commands.  It prints through a *ui*
(``show(text)``, ``ask_password(prompt)``).

Trust:

- the server: its key comes in the ``USER_HELLO`` ACK (``server_pub``) and is pinned
  per server URL on first use; a different key later aborts the login loudly.  Every
  frame the server sends after the hello must verify with it; before the first hello
  with a server (no pin yet) the login frames cannot be checked and are taken as is.
- other users: keys are pinned on first contact (first DM sent to or received from
  them); a DM whose verified signature comes from a different key is rejected, and
  ``/tell`` refuses to encrypt to a changed key, until the user runs ``/trust``.
- incoming DMs are shown only after: server signature, addressed to us, content_sig
  valid for ``sender`` (any preimage variant of PROTOCOL §2), sender key matches the
  pin, and decryption succeeds.  Anything else prints a ``[WARNING] rejected DM`` line,
  never the text.  Public-channel messages (``/all``) get the same checks, with the
  public content_sig preimage, and are shown once each as ``[public] <sender>: <text>``.

The public channel (docs/PUBLIC-CHANNEL.md): the server pushes its membership (ids and
keys) in ``PUBLIC_CHANNEL_UPDATED`` frames and our group-key share in
``PUBLIC_CHANNEL_KEY_SHARE``; ``/all`` encrypts and signs one ``MSG_PUBLIC_CHANNEL`` per
member on the workers.

Private-key work (key generation, scrypt, signing, decryption) runs on ``workers``;
timers use the injected ``clock``.

The package, one concern a module: ``core`` (shared state, requests and answers, ERROR
frames), ``link`` (the connection layer's events), ``auth`` (/register, /login, the server
key), ``peers`` (presence, user keys and pins, /list, /trust), ``dms`` (/tell, failed
deliveries; ``sent`` remembers what was sent), ``inbox`` (incoming messages), ``public``
(the public channel, /all, /members).
"""

from __future__ import annotations

from socp_tw.client.session.auth import CLIENT_NAME, MAX_RELOGIN_FAILURES, MIN_PASSWORD_CHARS, Authentication
from socp_tw.client.session.core import (
    PUBKEY_TIMEOUT,
    REASSEMBLY_TIMEOUT,
    REPLY_TIMEOUT,
    NotConnected,
    RequestFailed,
    ServerError,
)
from socp_tw.client.session.dms import (
    MAX_DM_BYTES,
    MAX_PARTS,
    PART_MAGIC,
    PART_RE,
    PART_TEXT_BYTES,
    DirectMessages,
    encode_dm_parts,
)
from socp_tw.client.session.inbox import MAX_PENDING_PER_SENDER, MAX_PENDING_TOTAL, Inbox
from socp_tw.client.session.link import LinkEvents
from socp_tw.client.session.peers import Peers
from socp_tw.client.session.public import PublicChannel
from socp_tw.client.session.sent import MAX_SENT_DMS, PREVIEW_CHARS, SENT_DM_TTL, SentDM, SentDMs


class ClientSession(LinkEvents, Authentication, Peers, DirectMessages, Inbox, PublicChannel):
    """One user's session with one server, across reconnections."""


ClientSession._handlers = {
    "ACK": ClientSession._on_reply,
    "USER_LOGIN_CHALLENGE": ClientSession._on_reply,
    "USER_LOGIN_OK": ClientSession._on_reply,
    "USER_HELLO_NONCE": ClientSession._on_reply,
    "LIST_RESPONSE": ClientSession._on_reply,
    "PUBKEY_RESPONSE": ClientSession._on_reply,
    "ERROR": ClientSession._on_error,
    "USER_DELIVER": ClientSession._on_user_deliver,
    "MSG_PUBLIC_CHANNEL": ClientSession._on_public_message,
    "PUBLIC_CHANNEL_UPDATED": ClientSession._on_public_updated,
    "PUBLIC_CHANNEL_KEY_SHARE": ClientSession._on_public_key_share,
    "USER_ADVERTISE": ClientSession._on_advertise,
    "USER_REMOVE": ClientSession._on_remove,
    "USER_LIST": ClientSession._on_user_list,
    "FILE_START": ClientSession._on_file_frame,
    "FILE_CHUNK": ClientSession._on_file_frame,
    "FILE_END": ClientSession._on_file_frame,
}

__all__ = [
    "CLIENT_NAME",
    "MAX_DM_BYTES",
    "MAX_PARTS",
    "MAX_PENDING_PER_SENDER",
    "MAX_PENDING_TOTAL",
    "MAX_RELOGIN_FAILURES",
    "MAX_SENT_DMS",
    "MIN_PASSWORD_CHARS",
    "PART_MAGIC",
    "PART_RE",
    "PART_TEXT_BYTES",
    "PREVIEW_CHARS",
    "PUBKEY_TIMEOUT",
    "REASSEMBLY_TIMEOUT",
    "REPLY_TIMEOUT",
    "SENT_DM_TTL",
    "ClientSession",
    "NotConnected",
    "RequestFailed",
    "SentDM",
    "SentDMs",
    "ServerError",
    "encode_dm_parts",
]
