"""RSA-2048 test keys: reproducible from a seed, or fresh from the OS; read from profiles."""

from __future__ import annotations

import functools
import math
import random

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from mynacard.personalize.fields import Field

PUBLIC_EXPONENT = 65537
KEY_BITS = 2048

# Product of the odd primes below 5000: one gcd sieves out most composite candidates.
_SMALL_PRIMES_PRODUCT = math.prod(
    n for n in range(3, 5000, 2) if all(n % d for d in range(3, math.isqrt(n) + 1, 2))
)
_MILLER_RABIN_ROUNDS = 5  # FIPS 186-5 B.3.1 for 1024-bit primes of an RSA-2048 key


def _passes_miller_rabin(candidate: int, rng: random.Random) -> bool:
    odd_part, twos = candidate - 1, 0
    while odd_part % 2 == 0:
        odd_part //= 2
        twos += 1
    for round_number in range(_MILLER_RABIN_ROUNDS):
        base = 2 if round_number == 0 else rng.randrange(3, candidate - 2)
        x = pow(base, odd_part, candidate)
        if x in (1, candidate - 1):
            continue
        for _ in range(twos - 1):
            x = pow(x, 2, candidate)
            if x == candidate - 1:
                break
        else:
            return False
    return True


def _random_prime(rng: random.Random, bits: int) -> int:
    """A prime of exactly `bits` bits with its top two bits set and p-1 coprime to e."""
    while True:
        candidate = rng.getrandbits(bits) | (3 << (bits - 2)) | 1
        if (
            math.gcd(candidate, _SMALL_PRIMES_PRODUCT) == 1
            and (candidate - 1) % PUBLIC_EXPONENT != 0
            and _passes_miller_rabin(candidate, rng)
        ):
            return candidate


def deterministic_rsa_key(rng: random.Random) -> rsa.RSAPrivateKey:
    """An RSA-2048 key (e = 65537) whose primes come from `rng`: same seed, same key."""
    p = _random_prime(rng, KEY_BITS // 2)
    q = _random_prime(rng, KEY_BITS // 2)
    while q == p:
        q = _random_prime(rng, KEY_BITS // 2)
    d = pow(PUBLIC_EXPONENT, -1, math.lcm(p - 1, q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=d,
        dmp1=rsa.rsa_crt_dmp1(d, p),
        dmq1=rsa.rsa_crt_dmq1(d, q),
        iqmp=rsa.rsa_crt_iqmp(p, q),
        public_numbers=rsa.RSAPublicNumbers(PUBLIC_EXPONENT, p * q),
    )
    return numbers.private_key()


def new_rsa_key(seed: str | None) -> rsa.RSAPrivateKey:
    """A deterministic key for a seed string, or a fresh OS-random key for None."""
    if seed is None:
        return rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=KEY_BITS)
    return deterministic_rsa_key(random.Random(seed))


def read_rsa_key(field: Field) -> rsa.RSAPrivateKey:
    """An unencrypted RSA-2048 private key in PEM."""
    expected = "an unencrypted RSA-2048 PEM private key"
    pem = field.text(expected=expected)
    try:
        key = _load_pem(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise field.fail(f"{expected} ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != KEY_BITS:
        raise field.fail(expected)
    return key


@functools.lru_cache(maxsize=256)
def _load_pem(pem: str) -> PrivateKeyTypes:
    """Load (and validate, ~40 ms for RSA-2048) a PEM key once per process."""
    return load_pem_private_key(pem.encode(), password=None)
