#!/usr/bin/env python3
"""Derive a consistent (report, driver RIM, VBIOS RIM) triple from the genuine vectors.

DERIVED TEST DATA, NOT NVIDIA's: the two genuine nvtrust RIMs describe other versions than
the genuine trustee/nvtrust H100 report, so no genuine matching pair exists offline. This
script copies each RIM's structure, sets its colloquialVersion to the report's driver /
VBIOS version and every *active* reference value to the report's block (RIM index i ->
SPDM block i+1), then signs it (enveloped XML-DSig, ECDSA P-384/SHA-384, C14N 1.1, exactly
NVIDIA's profile) with a throw-away TEST key chain made here. It also writes stored OCSP
responses for the test signer (good and revoked). Run from this folder with a Python that
has lxml, signxml and cryptography (e.g. the nv-local-gpu-verifier venv):
    python3 derive.py
The output is committed; re-running produces new keys and signatures (not bit-identical).
"""
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml import XMLSigner, methods

HERE = Path(__file__).parent
DATA = HERE.parent / "data" / "nvidia"
SWID = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
HASH_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
DSIG = "http://www.w3.org/2000/09/xmldsig#"
UTC = dt.timezone.utc


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Chrysalis TEST (not NVIDIA)")])


def cert(subject, issuer, key, issuer_key, ca, nb, na, serial):
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
         .serial_number(serial).not_valid_before(nb).not_valid_after(na)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                                      encipher_only=False, decipher_only=False), critical=True))
    return b.sign(issuer_key, hashes.SHA384())


def report_blocks():
    raw = bytes.fromhex((DATA / "trustee-hopper" / "hopperAttestationReport.txt").read_text().strip())
    r = raw[37:]
    n, rec_len = r[4], int.from_bytes(r[5:8], "little")
    rec, i, blocks = r[8:8 + rec_len], 0, {}
    for _ in range(n):
        idx, size = rec[i], int.from_bytes(rec[i + 2:i + 4], "little")
        blocks[idx] = rec[i + 4 + 3:i + 4 + size]
        i += 4 + size
    return blocks


def derive(src, version, blocks, key, chain_pem):
    root = etree.parse(str(src), etree.XMLParser(resolve_entities=False, remove_blank_text=False)).getroot()
    for sig in root.findall(f"{{{DSIG}}}Signature"):
        root.remove(sig)
    root.find(f"{{{SWID}}}Meta").set("colloquialVersion", version)
    for res in root.find(f"{{{SWID}}}Payload"):
        if res.get("active") == "True":
            res.set(f"{{{HASH_NS}}}Hash0", blocks[int(res.get("index")) + 1].hex())
    signer = XMLSigner(method=methods.enveloped, signature_algorithm="ecdsa-sha384", digest_algorithm="sha384",
                       c14n_algorithm="http://www.w3.org/2006/12/xml-c14n11")
    signed = signer.sign(root, key=key, cert=chain_pem)
    return etree.tostring(signed)


def main():
    t0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
    root_key, l4_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    root_name = name("Chrysalis TEST RIM Root")
    root_cert = cert(root_name, root_name, root_key, root_key, True, t0, dt.datetime(2050, 1, 1, tzinfo=UTC), 1)
    l4 = cert(name("Chrysalis TEST RIM L4 Signer"), root_name, l4_key, root_key, False, t0,
              dt.datetime(2030, 1, 1, tzinfo=UTC), 2)
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM).decode()
    (HERE / "test_rim_root.pem").write_text(pem(root_cert))
    blocks = report_blocks()
    rims = DATA / "nvtrust-rim"
    out = {
        "NV_GPU_DRIVER_GH100_550.90.07.swidtag": derive(rims / "Driver_RIM_test_no_gpu.swidtag", "550.90.07",
                                                        blocks, l4_key, [pem(l4), pem(root_cert)]),
        "NV_GPU_VBIOS_1010_0200_882_96009F0001.swidtag": derive(rims / "1010_0200_882_96005E0001_PROD.swidtag",
                                                                "96.00.9f.00.01", blocks, l4_key,
                                                                [pem(l4), pem(root_cert)]),
    }
    bundle = HERE / "bundle"
    (bundle / "ocsp").mkdir(parents=True, exist_ok=True)
    for fname, data in out.items():
        (bundle / fname).write_bytes(data)
    now = dt.datetime(2026, 11, 1, tzinfo=UTC)
    for status, fname in [(ocsp.OCSPCertStatus.GOOD, "good.der"), (ocsp.OCSPCertStatus.REVOKED, "revoked.der")]:
        b = ocsp.OCSPResponseBuilder().add_response(
            cert=l4, issuer=root_cert, algorithm=hashes.SHA384(), cert_status=status, this_update=now,
            next_update=now + dt.timedelta(days=30),
            revocation_time=now - dt.timedelta(days=1) if status == ocsp.OCSPCertStatus.REVOKED else None,
            revocation_reason=x509.ReasonFlags.key_compromise if status == ocsp.OCSPCertStatus.REVOKED else None,
        ).responder_id(ocsp.OCSPResponderEncoding.HASH, root_cert)
        resp = b.sign(root_key, hashes.SHA384())
        target = bundle / "ocsp" / fname if status == ocsp.OCSPCertStatus.GOOD else HERE / fname
        target.write_bytes(resp.public_bytes(serialization.Encoding.DER))


if __name__ == "__main__":
    main()
