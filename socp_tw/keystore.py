"""Transitional: the names ``client/session.py`` and ``services/users.py`` still import.

The code lives in :mod:`socp_tw.auth`; import from there.  Remove this module once
those two have moved to ``socp_tw.auth``.
"""

from socp_tw.auth.errors import CorruptKeystore as CorruptKeystore
from socp_tw.auth.errors import KeystoreError as KeystoreError
from socp_tw.auth.errors import LoginError as LoginError
from socp_tw.auth.errors import WrongPassword as WrongPassword
from socp_tw.auth.hello import hello_proof_preimage as hello_proof_preimage
from socp_tw.auth.hello import new_nonce as new_nonce
from socp_tw.auth.login import SrpClient as SrpClient
from socp_tw.auth.login import SrpServer as SrpServer
from socp_tw.auth.scrypt import DEFAULT_SCRYPT as DEFAULT_SCRYPT
from socp_tw.auth.scrypt import MIN_SCRYPT_N as MIN_SCRYPT_N
from socp_tw.auth.scrypt import TEST_SCRYPT as TEST_SCRYPT
from socp_tw.auth.scrypt import ScryptParams as ScryptParams
from socp_tw.auth.sealing import open_private_key as open_private_key
from socp_tw.auth.sealing import parse_keystore as parse_keystore
from socp_tw.auth.sealing import seal_private_key as seal_private_key
from socp_tw.auth.verifier import make_verifier as make_verifier
from socp_tw.auth.verifier import parse_verifier as parse_verifier
