"""The API key format: prefix, length, checksum, and hashing."""

from __future__ import annotations

from gateway.auth.tokens import display_prefix, generate_token, hash_token, well_formed


def test_generated_tokens_are_well_formed_and_distinct() -> None:
    tokens = {generate_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert token.startswith("igw_")
        assert len(token) == 4 + 43 + 6
        assert well_formed(token)


def test_a_changed_character_breaks_the_checksum() -> None:
    token = generate_token()
    body = token[4:10]
    changed = token[:4] + ("a" if body[0] != "a" else "b") + token[5:]
    assert not well_formed(changed)


def test_hash_is_sha256_hex_and_display_prefix_is_short() -> None:
    token = generate_token()
    assert len(hash_token(token)) == 64
    assert hash_token(token) != hash_token(generate_token())
    assert display_prefix(token) == token[:12]
