"""SOCP v1.3 cryptography (PROTOCOL.md §2, §8): keys, RSA-OAEP, RSA-PSS, content_sig.

Pure functions only. Strict in what we send (RSA-4096/e=65537, PSS salt 32,
b64u(DER) keys), tolerant in what we accept (any PSS salt, PEM or DER keys,
padded or not, every content_sig preimage variant seen in the wild). Verifiers
return ``False`` instead of raising: a bad signature is an answer, not a crash.

The package, one concern per module (every name is re-exported here, so callers
keep writing ``crypto.X``): :mod:`~socp_tw.crypto.keys`, :mod:`~socp_tw.crypto.oaep`,
:mod:`~socp_tw.crypto.pss` (and the transport ``sig``),
:mod:`~socp_tw.crypto.content_sig` (preimages and their variants).
"""

from socp_tw.crypto.content_sig import (
    dm_preimage,
    file_chunk_preimage,
    file_start_preimage,
    keyshare_preimage,
    public_preimage,
    sign_content,
    verify_content_sig,
    verify_dm_content_sig,
    verify_public_content_sig,
)
from socp_tw.crypto.keys import (
    PUBLIC_EXPONENT,
    RSA_BITS,
    BadKey,
    check_key_strength,
    digest_fingerprint,
    encode_public_key,
    fingerprint,
    generate_private_key,
    is_pem_b64u,
    load_private_key,
    load_public_key,
    private_key_to_pkcs8_der,
    spki_digest,
)
from socp_tw.crypto.oaep import (
    OAEP_MAX_PLAINTEXT,
    DecryptError,
    oaep_decrypt,
    oaep_encrypt,
    split_plaintext,
    split_text,
)
from socp_tw.crypto.pss import PSS_SALT_LENGTH, pss_sign, pss_verify, sign_payload, verify_payload

__all__ = [
    "OAEP_MAX_PLAINTEXT",
    "PSS_SALT_LENGTH",
    "PUBLIC_EXPONENT",
    "RSA_BITS",
    "BadKey",
    "DecryptError",
    "check_key_strength",
    "digest_fingerprint",
    "dm_preimage",
    "encode_public_key",
    "file_chunk_preimage",
    "file_start_preimage",
    "fingerprint",
    "generate_private_key",
    "is_pem_b64u",
    "keyshare_preimage",
    "load_private_key",
    "load_public_key",
    "oaep_decrypt",
    "oaep_encrypt",
    "private_key_to_pkcs8_der",
    "pss_sign",
    "pss_verify",
    "public_preimage",
    "sign_content",
    "sign_payload",
    "spki_digest",
    "split_plaintext",
    "split_text",
    "verify_content_sig",
    "verify_dm_content_sig",
    "verify_payload",
    "verify_public_content_sig",
]
