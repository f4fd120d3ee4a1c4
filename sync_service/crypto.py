"""Encryption of OAuth tokens at rest (Fernet: AES-128-CBC + HMAC-SHA256).

`TOKEN_ENCRYPTION_KEY` holds one or more comma-separated Fernet keys: the first encrypts, every
one decrypts, so a key is rotated by putting the new one first, re-encrypting every stored token
under it (`python -m sync_service.rotate_keys`; see docs/key-rotation.md), then dropping the old
one.
Without it, a development key file is created with mode 0600 and a warning: fine on a laptop,
wrong in production, where the key must come from a secret store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

log = logging.getLogger(__name__)


class TokenDecryptError(Exception):
    """A stored token cannot be decrypted with any configured key (wrong or rotated-out key)."""


class TokenCipher:
    """Encrypts and decrypts token strings. Never logs or repeats what it is given."""

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if not keys:
            raise ValueError("at least one Fernet key is needed")
        fernets = []
        for index, key in enumerate(keys):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                # Only the position is named: the value is a secret.
                raise ValueError(
                    f"TOKEN_ENCRYPTION_KEY: key #{index + 1} is not a Fernet key "
                    "(32 url-safe base64-encoded bytes; make one with "
                    "`python -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())'`)"
                ) from None
        self._first = fernets[0]
        self._fernet = MultiFernet(fernets)
        #: How many keys are configured (the first encrypts).
        self.key_count = len(fernets)

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode()
        except (InvalidToken, ValueError):
            raise TokenDecryptError(
                "a stored OAuth token cannot be decrypted with TOKEN_ENCRYPTION_KEY "
                "(was the key changed without keeping the old one?)"
            ) from None

    def is_current(self, ciphertext: str) -> bool:
        """Whether `ciphertext` opens with the first (newest) key alone."""
        try:
            self._first.decrypt(ciphertext.encode("ascii"))
        except (InvalidToken, ValueError):
            return False
        return True

    def rotate(self, ciphertext: str) -> str:
        """`ciphertext` re-encrypted under the first key (its Fernet timestamp kept).

        Raises TokenDecryptError when no configured key opens it.
        """
        try:
            return self._fernet.rotate(ciphertext.encode("ascii")).decode("ascii")
        except (InvalidToken, ValueError):
            raise TokenDecryptError(
                "a stored OAuth token cannot be decrypted with any key of TOKEN_ENCRYPTION_KEY"
            ) from None


def parse_key_list(raw: str) -> tuple[str, ...]:
    """The keys of a TOKEN_ENCRYPTION_KEY value: comma-separated, blanks ignored, order kept."""
    return tuple(key.strip() for key in raw.split(",") if key.strip())


def load_or_create_key_file(path: Path) -> str:
    """The development key in `path`, created (mode 0600) if missing. Blocking: run in a thread."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key().decode("ascii")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    log.warning(
        "TOKEN_ENCRYPTION_KEY is not set: created a development key file at %s; "
        "set TOKEN_ENCRYPTION_KEY from a secret store in production",
        path,
    )
    return key


def cipher_from_settings(keys: Sequence[str], key_file: Path) -> TokenCipher:
    """The configured keys, or the development key file. Blocking: run in a thread."""
    if keys:
        return TokenCipher(keys)
    return TokenCipher([load_or_create_key_file(key_file)])
