"""Validate the JSON manifests that `cargo xtask k8s` writes, offline, against published schemas.

Kubernetes objects: kubernetes-validate's vendored OpenAPI schemas, strict (unknown fields
are errors), for each Kubernetes release named in K8S_VERSIONS.

KubeVirt objects (kubevirt.io/*): KubeVirt's own OpenAPI document (api/openapi-spec/swagger.json
in the KubeVirt repository of the release you deploy), given as --kubevirt-openapi FILE. No
registry this project can reach ships it, so without the file those objects are SKIPPED, loudly.
The check is made strict the same way kubeconform does it: additionalProperties false on every
object schema that lists properties.

usage: python validate.py [--kubevirt-openapi swagger.json] FILE.json...
exit status 0 only if every checked object is valid.
"""
import json
import sys

import jsonschema
import kubernetes_validate

K8S_VERSIONS = ["1.32.0", "1.34.0"]


def strict(node):
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)
    return node


def kubevirt_validator(path):
    with open(path) as f:
        swagger = json.load(f)
    definitions = strict(swagger["definitions"])

    def for_kind(kind):
        name = "v1." + kind
        if name not in definitions:
            raise SystemExit(f"{path} has no definition {name}")
        schema = {"$ref": "#/definitions/" + name, "definitions": definitions}
        return jsonschema.Draft4Validator(schema)

    return for_kind


def main(argv):
    openapi = None
    if len(argv) >= 2 and argv[0] == "--kubevirt-openapi":
        openapi, argv = argv[1], argv[2:]
    kubevirt = kubevirt_validator(openapi) if openapi else None
    failed = skipped = checked = 0
    for path in argv:
        with open(path) as f:
            obj = json.load(f)
        what = f"{path}: {obj.get('apiVersion')} {obj.get('kind')}"
        if "apiVersion" not in obj or "kind" not in obj:
            print(f"INVALID {path}: not a Kubernetes object (no apiVersion/kind)")
            failed += 1
            continue
        if obj.get("apiVersion", "").startswith("kubevirt.io/"):
            if kubevirt is None:
                print(f"SKIPPED {what}: no KubeVirt OpenAPI schema given (--kubevirt-openapi swagger.json)")
                skipped += 1
                continue
            errors = sorted(kubevirt(obj["kind"]).iter_errors(obj), key=lambda e: list(e.path))
            for e in errors:
                print(f"INVALID {what} at {'/'.join(map(str, e.path))}: {e.message}")
            failed += bool(errors)
            checked += 1
            if not errors:
                print(f"ok      {what} (KubeVirt {openapi})")
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                print(f"ok      {what} (Kubernetes {version}, strict)")
            except kubernetes_validate.utils.SchemaNotFoundError as e:
                print(f"INVALID {what} (Kubernetes {version}): no schema for it ({e})")
                failed += 1
            except kubernetes_validate.ValidationError as e:
                print(f"INVALID {what} (Kubernetes {version}): {e.message} at {'/'.join(map(str, e.path))}")
                failed += 1
            checked += 1
    print(f"{checked} checks, {failed} failed, {skipped} skipped")
    return 1 if failed or not checked else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
