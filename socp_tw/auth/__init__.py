"""Secrets at rest and login primitives (our profile's PROTOCOL §7 extensions).

One concern per module, all pure functions or small state machines with no I/O:

* :mod:`~socp_tw.auth.errors`: the exception hierarchy (``KeystoreError`` and kin).
* :mod:`~socp_tw.auth.scrypt`: scrypt cost parameters, their bounds, the derivation.
* :mod:`~socp_tw.auth.sealing`: ``privkey_store``, the user's RSA key sealed under a
  password (scrypt + AES-256-GCM, ``"socp-keystore-v1."``); the server stores it but
  cannot open it.
* :mod:`~socp_tw.auth.srp`: the SRP-6a core (RFC 5054 group, hash-parameterised math,
  our profile's scrypt-stretched x).
* :mod:`~socp_tw.auth.verifier`: ``pake_password``, the SRP verifier record.
* :mod:`~socp_tw.auth.login`: the client and server halves of one login exchange.
* :mod:`~socp_tw.auth.hello`: the ``USER_HELLO`` key-possession proof and its nonces.
* :mod:`~socp_tw.auth.limiter`: the per-user login failure limiter.

The byte-exact formats are specified in ``docs/PROTOCOL-EXTENSIONS.md``.
Exception messages never contain passwords, keys or derived secrets.

CPU cost: every scrypt call with ``DEFAULT_SCRYPT`` takes ~0.4 s and 128 MiB; a
server-side SRP step is two or three 4096-bit modexps (a few ms).  Callers on the
reactor thread run both in a thread pool.
"""
