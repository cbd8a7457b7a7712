"""The registry lint (core/lint.py) alone, and as `etcdsync validate` prints it (offline, no etcd)."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import textwrap
from pathlib import Path

from etcdsync.core.lint import lint, target
from etcdsync.core.model import DesiredKey, ServiceDecl, Source


def svc(name: str, prefix: str = "/services/", fmt: str = "json", line: int = 1) -> ServiceDecl:
    return ServiceDecl(name, prefix, fmt, Source("s.yaml", line, 9))


def cfg(key: str, document: str = "ConfigSet/flags", line: int = 20) -> DesiredKey:
    return DesiredKey(key, b"1", "/", document=document, origin=Source("c.yaml", line, 5))


def codes(services: list[ServiceDecl], keys: list[DesiredKey] = ()) -> list[tuple[str, str | None, int | None]]:  # type: ignore[assignment]
    return [(w.code, w.file, w.line) for w in lint(services, {k.key: k for k in keys})]


def test_the_target_has_no_trailing_slash() -> None:
    assert target(svc("checkout")) == "/services/checkout"
    assert target(svc("api", "services/", "grpc")) == "services/api"


def test_a_service_whose_name_extends_another_is_in_its_grpc_range() -> None:
    ws = lint([svc("checkout", "services/", "grpc", 3), svc("checkout-admin", "services/", "grpc", 9)], {})
    assert [(w.code, w.line) for w in ws] == [("service-prefix-overlap", 9)]
    assert "etcd:///services/checkout" in ws[0].message and "checkout-admin" in ws[0].message
    # the other way round nothing is picked up
    assert codes([svc("checkout-admin", line=2), svc("checkouts", line=4)]) == []


def test_json_services_warn_too_and_name_the_no_slash_rule() -> None:
    ws = lint([svc("checkout"), svc("checkout-admin", line=7)], {})
    assert [w.code for w in ws] == ["service-prefix-overlap"]
    assert "without the trailing slash" in ws[0].message


def test_a_service_under_another_services_key_space() -> None:
    ws = lint([svc("checkout"), svc("admin", "/services/checkout/", line=7)], {})
    assert [(w.code, w.line) for w in ws] == [("service-prefix-overlap", 7)]
    assert "lists them as its own" in ws[0].message


def test_distinct_services_are_quiet() -> None:
    assert codes([svc("a"), svc("b"), svc("ab", "/other/"), svc("a", "services/", "grpc")]) == []


def test_two_documents_with_the_same_grpc_target() -> None:
    ws = lint([svc("checkout", "services/", "grpc", 3), svc("out", "services/check", "grpc", 12)], {})
    assert [(w.code, w.line) for w in ws] == [("duplicate-target", 12)]        # once, at the later one
    assert "etcd:///services/checkout" in ws[0].message and "s.yaml:3:9" in ws[0].message


def test_a_configset_key_in_a_service_range() -> None:
    keys = [cfg("/services/checkout/flags", line=21), cfg("/services/checkout/more", line=22),
            cfg("/services/checkout-x", "ConfigSet/other", line=30), cfg("/services/checkouT"),
            cfg("/services/checkou"), DesiredKey("/services/checkout/i1", b"{}", "/services/checkout/",
                                                document="Service/checkout")]
    ws = lint([svc("checkout")], {k.key: k for k in keys})
    assert [(w.code, w.file, w.line) for w in ws] == [("configset-in-service", "c.yaml", 21),
                                                       ("configset-in-service", "c.yaml", 30)]
    assert "(and 1 more key)" in ws[0].message and "reads it as an instance" in ws[0].message
    assert "without the trailing slash" in ws[1].message


def _validate(*args: str) -> tuple[int, str, str]:
    from etcdsync.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    gc_was_enabled = gc.isenabled()      # main() turns the cyclic collector off for one-shot commands
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(["validate", *args])
                code = 0
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return code, out.getvalue(), err.getvalue()


SERVICES = textwrap.dedent("""\
    apiVersion: etcdsync/v1
    kind: Service
    metadata:
      name: checkout
    spec:
      format: grpc
      instances: [{host: 10.0.0.1, port: 80}]
    ---
    apiVersion: etcdsync/v1
    kind: Service
    metadata:
      name: checkout-admin
    spec:
      format: grpc
      instances: [{host: 10.0.0.2, port: 80}]
    """)


def test_validate_prints_warnings_on_stderr_and_exits_0(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(SERVICES)
    code, out, err = _validate("-f", str(f))
    assert code == 0
    assert out.strip() == "valid: 1 file, 2 keys, 0 live instances, 1 warning"
    assert err.startswith(f"warning: {f}:12: Service/checkout-admin") and err.rstrip().endswith("[service-prefix-overlap]")

    code, out, err = _validate("-f", str(f), "-o", "json")
    assert code == 0 and err == ""
    assert json.loads(out)["warnings"] == [{"code": "service-prefix-overlap", "message": json.loads(out)["warnings"][0]["message"],
                                           "file": str(f), "line": 12}]

    code, out, err = _validate("-f", str(f), "--strict")
    assert code == 2 and err.rstrip().endswith("error: 1 lint warning (--strict)")

    f.write_text(SERVICES.replace("checkout-admin", "payments"))
    assert _validate("-f", str(f), "--strict") == (0, "valid: 1 file, 2 keys, 0 live instances\n", "")
    assert json.loads(_validate("-f", str(f), "-o", "json")[1])["warnings"] == []
