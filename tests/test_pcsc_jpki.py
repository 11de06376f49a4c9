"""The JPKI-AP through the real stack: pyscard and OpenSC over pcscd + vpcd + `mynacard serve`."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from pcsc import REPO_ROOT

from mynacard.personalize.profile import KNOWN_ATRS, Profile, load_profile

pytestmark = pytest.mark.pcsc

PKCS11_MODULE = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")

ServeCard = Callable[..., AbstractContextManager[str]]


@pytest.fixture(scope="module")
def profile() -> Profile:
    return load_profile("default")


@pytest.fixture
def reader(serve: ServeCard) -> Iterator[str]:
    with serve("default", reader=0) as name:
        yield name


class Connection:
    """A pyscard connection sending hex APDUs, as a middleware developer would."""

    def __init__(self, reader_name: str) -> None:
        from smartcard.System import readers

        (match,) = [r for r in readers() if str(r) == reader_name]
        self._conn = match.createConnection()
        self._conn.connect()

    def atr(self) -> bytes:
        return bytes(self._conn.getATR())

    def send(self, apdu: str | bytes) -> tuple[bytes, int]:
        raw = bytes.fromhex(apdu) if isinstance(apdu, str) else apdu
        data, sw1, sw2 = self._conn.transmit(list(raw))
        return bytes(data), sw1 << 8 | sw2

    def read_ef(self, fid: str) -> bytes:
        assert self.send("00A4020C02" + fid)[1] == 0x9000
        out = b""
        while True:
            data, sw = self.send(f"00B0{len(out):04X}00")
            if sw == 0x6B00:
                return out
            assert sw == 0x9000
            out += data

    def close(self) -> None:
        self._conn.disconnect()
        self._conn.release()


def der_certificate(ef: bytes) -> x509.Certificate:
    length = int.from_bytes(ef[2:4], "big") + 4  # 30 82 hh ll, as OpenSC reads it
    return x509.load_der_x509_certificate(ef[:length])


def test_pyscard_reads_certificates_and_verifies_a_card_signature(
    reader: str, profile: Profile
) -> None:
    assert profile.jpki is not None
    conn = Connection(reader)
    try:
        assert conn.atr() == profile.atr
        assert conn.send("00A4040C0AD392F000260100000001")[1] == 0x9000
        auth = der_certificate(conn.read_ef("000A"))
        assert conn.send("00A4020C020001")[1] == 0x9000
        assert conn.send("00B0000004")[1] == 0x6982
        assert conn.send("00A4020C02001B")[1] == 0x9000
        assert conn.send("00200080")[1] == 0x63C5
        sign_pw = profile.pins["sign"].encode()
        assert conn.send(bytes((0, 0x20, 0, 0x80, len(sign_pw))) + sign_pw)[1] == 0x9000
        sign = der_certificate(conn.read_ef("0001"))
        assert sign.public_bytes(serialization.Encoding.DER) == profile.jpki.sign_cert
        assert auth.public_bytes(serialization.Encoding.DER) == profile.jpki.auth_cert

        message = "電子署名のテスト　１２３".encode()
        digest = hashlib.sha256(message).digest()
        for pin_ef, pin, key_ef, cert in (
            ("0018", profile.pins["auth"], "0017", auth),
            ("001B", profile.pins["sign"], "001A", sign),
        ):
            assert conn.send("00A4020C02" + pin_ef)[1] == 0x9000
            value = pin.encode()
            assert conn.send(bytes((0, 0x20, 0, 0x80, len(value))) + value)[1] == 0x9000
            assert conn.send("00A4020C02" + key_ef)[1] == 0x9000
            data = SHA256_DIGEST_INFO + digest
            signature, sw = conn.send(b"\x80\x2a\x00\x80" + bytes((len(data),)) + data + b"\x00")
            assert sw == 0x9000
            key = cert.public_key()
            assert isinstance(key, rsa.RSAPublicKey)
            key.verify(signature, digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    finally:
        conn.close()


def run(*args: str, stdin: bytes | None = None) -> str:
    result = subprocess.run(args, capture_output=True, input=stdin, timeout=60, check=False)
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{output}"
    return output


def test_opensc_names_the_jpki_driver(reader: str) -> None:
    assert run("opensc-tool", "--reader", "0", "--name").strip() == "jpki"


@pytest.mark.parametrize("atr_name", ["jpki-03", "jpki-06"])  # a contact, a contactless ATR
def test_another_known_atr_reaches_pcsc_and_opensc_still_finds_jpki(
    serve: ServeCard, tmp_path: Path, atr_name: str
) -> None:
    """OpenSC's ATR table has only the default ATR: with any other it finds the card by
    SELECTing the JPKI AID (docs/card-spec.md §1), after its other drivers' probes got clean
    errors."""
    shipped = (REPO_ROOT / "profiles" / "default.toml").read_text(encoding="utf-8")
    default_atr = f'atr = "{load_profile("default").atr.hex().upper()}"'
    assert default_atr in shipped
    profile_path = tmp_path / f"{atr_name}.toml"
    profile_path.write_text(shipped.replace(default_atr, f'atr = "{atr_name}"'), encoding="utf-8")
    with serve(profile_path, reader=0) as name:
        conn = Connection(name)
        try:
            assert conn.atr() == KNOWN_ATRS[atr_name]
        finally:
            conn.close()
        assert run("opensc-tool", "--reader", "0", "--name").strip() == "jpki"
        certs = run("pkcs15-tool", "--reader", "0", "--list-certificates")
        assert "User Authentication Certificate" in certs


def test_pkcs15_tool_lists_certificates_and_pin_counters(
    reader: str, profile: Profile, serve: ServeCard
) -> None:
    certs = run("pkcs15-tool", "--reader", "0", "--list-certificates")
    for label in (
        "User Authentication Certificate",
        "Digital Signature Certificate",
        "User Authentication Certificate CA",
        "Digital Signature Certificate CA",
    ):
        assert f"[{label}]" in certs
    pins = run("pkcs15-tool", "--reader", "0", "--list-pins")
    assert "User Authentication PIN" in pins and "Digital Signature PIN" in pins
    assert [line.split(":")[1].strip() for line in pins.splitlines() if "Tries left" in line] == [
        "3",
        "5",
    ]


def test_pkcs15_tool_counters_follow_wrong_tries(
    serve: ServeCard, tmp_path: Path, profile: Profile
) -> None:
    from mynacard import open_card

    state = tmp_path / "state"
    with open_card(profile, state) as card:
        card.transmit(bytes.fromhex("00A4040C0AD392F000260100000001"))
        card.transmit(bytes.fromhex("00A4020C020018"))
        assert card.transmit(bytes.fromhex("0020008004") + b"0000") == b"\x63\xc2"
    with serve("default", state_dir=state, reader=0):
        pins = run("pkcs15-tool", "--reader", "0", "--list-pins")
    tries = [line.split(":")[1].strip() for line in pins.splitlines() if "Tries left" in line]
    assert tries == ["2", "5"]


@pytest.mark.parametrize(
    ("key_id", "slot", "pin_name", "cert_id"),
    [("01", "0", "auth", "01"), ("02", "1", "sign", "02")],
    ids=["auth-key", "sign-key"],
)
def test_pkcs11_tool_signature_verifies_with_openssl(
    reader: str,
    profile: Profile,
    tmp_path: Path,
    key_id: str,
    slot: str,
    pin_name: str,
    cert_id: str,
) -> None:
    data = tmp_path / "data.txt"
    data.write_text("マイナンバーカードで署名　ＰＫＣＳ＃１１\n", encoding="utf-8")
    signature = tmp_path / "data.sig"
    run(
        "pkcs11-tool", "--module", PKCS11_MODULE, "--slot-index", slot,
        "--login", "--pin", profile.pins[pin_name], "--sign", "--id", key_id,
        "--mechanism", "SHA256-RSA-PKCS",
        "--input-file", str(data), "--output-file", str(signature),
    )  # fmt: skip
    cert_pem = tmp_path / "cert.pem"
    read_args = ["pkcs15-tool", "--reader", "0", "--read-certificate", cert_id]
    if pin_name == "sign":  # the signature certificate is private: it needs the password
        read_args += ["--verify-pin", "--auth-id", "02", "--pin", profile.pins["sign"]]
    listing = run(*read_args)
    cert_pem.write_text(listing[listing.index("-----BEGIN") :])
    pubkey = tmp_path / "pub.pem"
    run("openssl", "x509", "-in", str(cert_pem), "-noout", "-pubkey", "-out", str(pubkey))
    verified = run(
        "openssl", "dgst", "-sha256", "-verify", str(pubkey), "-signature", str(signature),
        str(data),
    )  # fmt: skip
    assert "Verified OK" in verified
