"""Encryption and authentication of backup images and repositories (docs/format.md,
"Encryption"): passphrase key derivation (:mod:`.kdf`), the master key (:mod:`.masterkey`),
key files (:mod:`.keyfile`), chunk sealing and image MACs (:mod:`.sealing`), and the keys a
process may use (:mod:`.keyring`). Everything is built on ``cryptography`` (AES-256-GCM,
HKDF-SHA256, Poly1305, Argon2id) and ``hashlib`` (scrypt, keyed BLAKE2b)."""
