"""The standard OTEL_* variables are the SDK's: the resource takes OTEL_SERVICE_NAME and
OTEL_RESOURCE_ATTRIBUTES over Tessera's defaults, Tessera adds service.instance.id and service.version only
where they say nothing, the sampler is the one OTEL_TRACES_SAMPLER names, and OTLP export follows
OTEL_TRACES_EXPORTER / the endpoint variables (`control_plane/tracing.py`)."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, SERVICE_VERSION

from tessera import installed_version
from tessera.control_plane.tracing import otlp_export_wanted, otlp_protocol, setup_tracing, tracing_resource


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(key)


def test_without_otel_variables_the_resource_is_tesseras_service_instance_and_version() -> None:
    attrs = tracing_resource("tessera-master", "m2").attributes
    assert attrs[SERVICE_NAME] == "tessera-master"
    assert attrs[SERVICE_INSTANCE_ID] == "m2"
    assert attrs[SERVICE_VERSION] == installed_version()
    assert attrs["telemetry.sdk.name"] == "opentelemetry"  # the SDK's own defaults stay


def test_otel_service_name_and_resource_attributes_win_over_tesseras_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "x")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.version=9.9,deployment.environment=prod")
    attrs = tracing_resource("tessera-master", "m1").attributes
    assert (attrs[SERVICE_NAME], attrs[SERVICE_VERSION], attrs[SERVICE_INSTANCE_ID]) == ("x", "9.9", "m1")
    assert attrs["deployment.environment"] == "prod"


def test_service_name_from_otel_resource_attributes_alone_wins_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=y,service.instance.id=pod-7")
    attrs = tracing_resource("tessera-agent", "host-1").attributes
    assert (attrs[SERVICE_NAME], attrs[SERVICE_INSTANCE_ID]) == ("y", "pod-7")


def test_the_sampler_is_the_one_otel_traces_sampler_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = setup_tracing("tessera-master", set_global=False)
    try:
        with provider.get_tracer("t").start_as_current_span("s") as span:
            assert not span.is_recording()
    finally:
        provider.shutdown()


@pytest.mark.parametrize(("environ", "wanted"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    ({"OTEL_TRACES_EXPORTER": "console"}, False),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    ({"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
])
def test_otlp_export_follows_the_standard_variables(environ: dict[str, str], wanted: bool) -> None:
    assert otlp_export_wanted(environ) is wanted


def test_the_otlp_protocol_is_http_protobuf_unless_a_variable_says_otherwise() -> None:
    assert otlp_protocol({}) == "http/protobuf"
    assert otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "grpc"
    assert otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                          "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}) == "http/protobuf"
