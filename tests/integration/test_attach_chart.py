"""The chart's admission webhook (``webhook.enabled``): the same webhook as the operator's local
mode, a CA bundle that verifies the serving certificate, flags the CLI parses, clear refusals
of values that cannot work, and objects the API server accepts."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding

from ckpt_operator.api import names
from ckpt_operator.kube import webhook
from tests.integration.test_chart import (
    ROOTS,
    Helm,
    _cli_config,
    _values_file,
    dry_run,
    dynamic,
    kinds,
    only,
    render,
)

pytestmark = pytest.mark.integration

WEBHOOK = {"allowedRoots": ROOTS, "webhook": {"enabled": True}}


def test_webhook_is_off_by_default(helm: Helm, tmp_path: Path) -> None:
    found = kinds(render(helm, tmp_path, "ckpt", "ckpt-system", {"allowedRoots": ROOTS}))
    assert "MutatingWebhookConfiguration" not in found and "Secret" not in found


def test_chart_webhook_is_the_operators_and_its_certificate_verifies(
    helm: Helm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {**WEBHOOK, "webhook": {"enabled": True, "failurePolicy": "Fail"}}
    manifest = render(helm, tmp_path, "ckpt", "ckpt-system", values)
    config = only(manifest, "MutatingWebhookConfiguration")
    (entry,) = config["webhooks"]
    client_config = entry["clientConfig"]
    assert client_config["service"] == {
        "name": "ckpt-ckpt-operator-webhook",
        "namespace": "ckpt-system",
        "path": f"/{names.WEBHOOK_PATH}",
        "port": 443,
    }
    assert entry == webhook.mutating_webhook(client_config, failure_policy="Fail", timeout_s=5)

    secret = only(manifest, "Secret")["data"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(client_config["caBundle"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["tls.crt"]))
    assert base64.b64decode(secret["ca.crt"]) == base64.b64decode(client_config["caBundle"])
    public_key: Any = ca.public_key()
    public_key.verify(
        cert.signature,
        cert.tbs_certificate_bytes,
        padding.PKCS1v15(),
        cert.signature_hash_algorithm,
    )
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "ckpt-ckpt-operator-webhook.ckpt-system.svc" in sans.get_values_for_type(x509.DNSName)

    deployment = only(manifest, "Deployment")["spec"]["template"]["spec"]
    container = deployment["containers"][0]
    seen = _cli_config(container["args"], monkeypatch)["config"].webhook
    assert (seen.port, seen.configuration) == (9443, None)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "webhook-tls")
    assert seen.certfile == f"{mount['mountPath']}/tls.crt"
    assert seen.keyfile == f"{mount['mountPath']}/tls.key"
    volume = next(v for v in deployment["volumes"] if v["name"] == "webhook-tls")
    assert volume["secret"]["secretName"] == only(manifest, "Secret")["metadata"]["name"]
    service = next(
        s for s in manifest if s["kind"] == "Service" and "webhook" in s["metadata"]["name"]
    )
    assert service["spec"]["ports"][0]["targetPort"] == "webhook"


def test_cert_manager_issues_the_certificate_and_injects_the_ca(helm: Helm, tmp_path: Path) -> None:
    values = {**WEBHOOK, "webhook": {"enabled": True, "certManager": {"enabled": True}}}
    manifest = render(helm, tmp_path, "ckpt", "ckpt-system", values)
    assert {"Issuer", "Certificate"} <= set(kinds(manifest)) and "Secret" not in kinds(manifest)
    config = only(manifest, "MutatingWebhookConfiguration")
    annotation = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert annotation == "ckpt-system/ckpt-ckpt-operator-webhook"
    assert "caBundle" not in config["webhooks"][0]["clientConfig"]
    certificate = only(manifest, "Certificate")["spec"]
    assert certificate["dnsNames"] == ["ckpt-ckpt-operator-webhook.ckpt-system.svc"]
    issuer = {"name": "corp", "kind": "ClusterIssuer"}
    values["webhook"]["certManager"]["issuerRef"] = issuer
    manifest = render(helm, tmp_path, "ckpt", "ckpt-system", values)
    assert "Issuer" not in kinds(manifest)
    assert only(manifest, "Certificate")["spec"]["issuerRef"] == issuer


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"replicas": 2}, "webhook.enabled needs replicas: 1"),
        ({"webhook": {"enabled": True, "failurePolicy": "Maybe"}}, "/webhook/failurePolicy"),
        ({"webhook": {"enabled": True, "timeoutSeconds": 60}}, "/webhook/timeoutSeconds"),
    ],
    ids=["hot-standby", "failure-policy", "timeout"],
)
def test_webhook_values_that_cannot_work_fail_clearly(
    helm: Helm, tmp_path: Path, extra: dict[str, Any], message: str
) -> None:
    values = _values_file(tmp_path, {**WEBHOOK, **extra})
    proc = helm(
        "template",
        "r",
        str(Path(__file__).parents[2] / "charts" / "ckpt-operator"),
        "--values",
        str(values),
        check=False,
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_webhook_objects_pass_a_server_side_dry_run(
    helm: Helm, k8s: Any, tmp_path: Path, namespace: str
) -> None:
    manifest = render(helm, tmp_path, f"ckpt-{namespace}", namespace, WEBHOOK)
    dyn = dynamic(k8s, tmp_path)
    rejected = []
    for obj in manifest:
        try:
            dry_run(dyn, obj, namespace)
        except Exception as error:
            rejected.append(f"{obj['kind']}/{obj['metadata']['name']}: {error}")
    assert not rejected, "\n".join(rejected)
