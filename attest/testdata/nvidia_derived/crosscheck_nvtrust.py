#!/usr/bin/env python3
"""Cross-check of the Rust verifier against NVIDIA's own nv-local-gpu-verifier (PyPI), offline.

Runs NVIDIA's classes directly on the same vectors (no NVML, no network): report parsing and
signature, FWID extraction, device chain checks (cases 1-4), RIM XML-DSig signature (signxml,
leaf certificate given explicitly, since the genuine L4 signers have expired), RIM chain at
the current time, and the golden-vs-runtime comparison on the derived pair.
Usage: <venv with nv-local-gpu-verifier>/bin/python crosscheck_nvtrust.py
"""
import json
import re
from pathlib import Path

from lxml import etree
from OpenSSL import crypto
from signxml import XMLVerifier

from verifier.attestation import AttestationReport
from verifier.cc_admin_utils import CcAdminUtils
from verifier.config import BaseSettings, HopperSettings
from verifier.rim import RIM
from verifier.utils import format_vbios_version
from verifier.verifier import Verifier

HERE = Path(__file__).parent
DATA = HERE.parent / "data" / "nvidia"
out = {}


def pem_certs(text):
    return [crypto.load_certificate(crypto.FILETYPE_PEM, m.encode())
            for m in re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)]


settings = HopperSettings()
raw = bytes.fromhex((DATA / "trustee-hopper/hopperAttestationReport.txt").read_text().strip())
report = AttestationReport(raw, settings)
chain1 = pem_certs((DATA / "trustee-hopper/hopper_cert_chain_case1.txt").read_text())
out["report_signature_valid"] = bool(report.verify_signature(chain1[0].to_cryptography(), 96, settings.HashFunction))
tampered = bytearray(raw); tampered[37 + 8 + 4 + 3 + 10] ^= 1
try:
    out["tampered_signature_valid"] = bool(AttestationReport(bytes(tampered), settings).verify_signature(
        chain1[0].to_cryptography(), 96, settings.HashFunction))
except Exception as e:  # noqa: BLE001
    out["tampered_signature_valid"] = f"raised {type(e).__name__}"
opaque = report.get_response_message().get_opaque_data()
out["driver_version"] = opaque.get_data("OPAQUE_FIELD_ID_DRIVER_VERSION").decode().strip("\x00")
out["vbios_version"] = format_vbios_version(opaque.get_data("OPAQUE_FIELD_ID_VBIOS_VERSION"))
out["report_fwid"] = opaque.get_data("OPAQUE_FIELD_ID_FWID").hex()
out["cert_fwid"] = CcAdminUtils.extract_fwid(chain1[0], settings)
out["nonce"] = report.get_request_message().get_nonce().hex()
out["measurements"] = len(report.get_measurements())
for case in (1, 2, 3, 4):
    chain = pem_certs((DATA / f"trustee-hopper/hopper_cert_chain_case{case}.txt").read_text())
    try:
        ok = CcAdminUtils.verify_certificate_chain(chain, settings, BaseSettings.Certificate_Chain_Verification_Mode.GPU_ATTESTATION)
        out[f"device_chain_case{case}"] = str(ok)
    except Exception as e:  # noqa: BLE001
        out[f"device_chain_case{case}"] = f"{type(e).__name__}: {str(e).strip()}"
    if case == 4:
        fw = CcAdminUtils.extract_fwid(chain[0], settings)
        out["case4_leaf_fwid"] = fw if fw else "(none)"


def rim_signature(path):
    root = RIM.read(base_RIM_path=str(path))
    leaf = root.find(".//{http://www.w3.org/2000/09/xmldsig#}X509Certificate").text
    pem = "-----BEGIN CERTIFICATE-----\n" + leaf.strip() + "\n-----END CERTIFICATE-----\n"
    try:
        XMLVerifier().verify(root, x509_cert=pem)
        return "valid"
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"


rim_root = crypto.load_certificate(crypto.FILETYPE_PEM, (DATA / "nvtrust-rim/verifier_RIM_root.pem").read_bytes())
for name in ("1010_0200_882_96005E0001_PROD.swidtag", "Driver_RIM_test_no_gpu.swidtag"):
    p = DATA / "nvtrust-rim" / name
    out[f"rim_xmldsig[{name}]"] = rim_signature(p)
    rim = RIM("vbios" if name.startswith("1010") else "driver", settings, rim_path=str(p))
    chain = rim.extract_certificates() + [rim_root]
    out[f"rim_chain_now[{name}]"] = str(CcAdminUtils.verify_certificate_chain(
        chain, settings, BaseSettings.Certificate_Chain_Verification_Mode.VBIOS_RIM_CERT))
    tampered_xml = p.read_text().replace("73bbf35822549e28", "73bbf35822549e29", 1)
    tp = Path("/tmp/tampered.swidtag"); tp.write_text(tampered_xml)
    if tampered_xml != p.read_text():
        out[f"rim_xmldsig_tampered[{name}]"] = rim_signature(tp)

bundle = HERE / "bundle"
driver = RIM("driver", settings, rim_path=str(bundle / "NV_GPU_DRIVER_GH100_550.90.07.swidtag"))
vbios = RIM("vbios", settings, rim_path=str(bundle / "NV_GPU_VBIOS_1010_0200_882_96009F0001.swidtag"))
out["derived_xmldsig_driver"] = rim_signature(bundle / "NV_GPU_DRIVER_GH100_550.90.07.swidtag")
v = Verifier(report, driver, vbios, settings)
out["derived_compare"] = v.verify(settings)
v.runtime_measurements = list(v.runtime_measurements)
v.runtime_measurements[3] = "ff" + v.runtime_measurements[3][2:]
v.runtime_measurements[22] = "ff" + v.runtime_measurements[22][2:]
out["derived_compare_changed"] = v.verify(settings)
print(json.dumps(out, indent=1))
