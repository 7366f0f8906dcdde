"""OpenTelemetry traces, configured only by the standard OTEL_* variables.

Off unless an OTLP endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT): then spans go to it over OTLP/HTTP through a batch
processor, sampled as OTEL_TRACES_SAMPLER says. When off, ingest creates no span at all, so
tracing costs nothing on the hot path. A request's context travels in its stream entries as
a W3C `traceparent`, and the worker's batch span links to each producer span.

What is configured is a `Tracing` object that the command builds once and hands to whatever
makes spans (HTTP telemetry, ingest's endpoints, the consumer, the store): no module state.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, NoOpTracer, Span, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from queueflow import __version__

_propagator = TraceContextTextMapPropagator()


@dataclass(frozen=True, slots=True)
class Tracing:
    """Whether spans are made, and the tracer that makes them: the SDK provider's own tracer,
    not the API's proxy, whose extra layer of calls costs on the hot path."""

    enabled: bool
    tracer: Tracer

    @classmethod
    def off(cls) -> Tracing:
        return cls(False, NoOpTracer())


def configure_tracing(service: str, exporter: SpanExporter | None = None) -> Tracing:
    """Install a tracer provider when OTEL_* asks for one (or an exporter is given, as tests
    do); otherwise tracing is off."""
    if exporter is None:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        disabled = os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true"
        if not endpoint or disabled or os.environ.get("OTEL_TRACES_EXPORTER") == "none":
            return Tracing.off()
        # Imported only when used: the exporter pulls in protobuf.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME") or f"queueflow-{service}",
            "service.version": __version__,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return Tracing(True, provider.get_tracer("queueflow", __version__))


def context_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> Context | None:
    """The caller's context from a `traceparent` request header, if it sent one."""
    for name, value in headers:
        if name == b"traceparent":
            return _propagator.extract({"traceparent": value.decode("latin-1")})
    return None


def traceparent(span: Span) -> bytes | None:
    """The span's W3C context for a stream entry; None for a span sampled out, whose entries
    then take the untraced append (a link to a span never exported would lead nowhere)."""
    if not span.is_recording():
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, trace.set_span_in_context(span))
    return carrier.get("traceparent", "").encode()


def links(traceparents: Iterable[bytes]) -> list[Link]:
    """One link per distinct producer span (a 100-event request shares one)."""
    found: dict[bytes, Link] = {}
    for value in traceparents:
        if value in found:
            continue
        context = trace.get_current_span(
            _propagator.extract({"traceparent": value.decode("latin-1")})
        ).get_span_context()
        if context.is_valid:
            found[value] = Link(context)
    return list(found.values())
