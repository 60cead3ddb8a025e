"""Shared test keys and the SOCP v1.3 reference vectors.

RSA-4096 key generation costs ~0.5 s, so tests never generate keys per test: use
the vector keys (:func:`vector_key`) or :func:`test_key`, which generates each
extra key once per process and caches it.

The vectors ship inside the package (``vectors/socp-v1.3-vectors.json``) so the
suite is self-contained; :func:`shared_vectors_path` finds the project-wide copy
(``$SOCP_VECTORS``, or ``shared/vectors/`` beside any ancestor directory) so a
test can check that both copies are identical.
"""

import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from socp_tw import crypto

VECTORS_NAME = "socp-v1.3-vectors.json"
VECTORS_PATH: Path = Path(__file__).resolve().parent / "vectors" / VECTORS_NAME
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))

_generated: dict[int, RSAPrivateKey] = {}
_vector_keys: dict[str, RSAPrivateKey] = {}


def shared_vectors_path() -> Path | None:
    """The project-wide vectors file, or None when this checkout has no copy of ``shared/``."""
    override = os.environ.get("SOCP_VECTORS")
    if override:
        path = Path(override)
        return path if path.is_file() else None
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "vectors" / VECTORS_NAME
        if candidate.is_file():
            return candidate
    return None


def test_key(n: int) -> RSAPrivateKey:
    """Extra RSA-4096 key number ``n`` (0, 1, 2...), generated once per process."""
    if not 0 <= n < 8:
        raise ValueError("tests get at most 8 generated keys: each costs ~0.5 s")
    key = _generated.get(n)
    if key is None:
        key = _generated[n] = crypto.generate_private_key()
    return key


test_key.__test__ = False  # type: ignore[attr-defined]  # not a test (for pytest users)


def vector_key(name: str) -> RSAPrivateKey:
    """The private key of vector user ``name`` ("alice" or "bob"), parsed once."""
    key = _vector_keys.get(name)
    if key is None:
        pem = VECTORS["keys"][name]["private_pkcs8_pem"].encode("ascii")
        # Trusted test keys: skip the slow consistency check (~0.25 s per 4096-bit key).
        key = _vector_keys[name] = load_pem_private_key(  # type: ignore[assignment]
            pem, password=None, unsafe_skip_rsa_key_validation=True
        )
    return key


def vector_id(name: str) -> str:
    """The UUID of vector user ``name``."""
    return VECTORS["ids"][name]
