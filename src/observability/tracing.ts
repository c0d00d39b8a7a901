import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Attributes, type Span, type TextMapGetter } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor, ParentBasedSampler, TraceIdRatioBasedSampler, AlwaysOnSampler, AlwaysOffSampler, type Sampler } from '@opentelemetry/sdk-trace-base';
import type { IncomingHttpHeaders } from 'node:http';

const HEADERS_GETTER: TextMapGetter<IncomingHttpHeaders> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) => carrier[key],
};

/** Whether the standard OTEL_* variables name somewhere to send traces. */
export function tracingConfigured(env: NodeJS.ProcessEnv): boolean {
  if (env.OTEL_SDK_DISABLED === 'true' || env.OTEL_TRACES_EXPORTER === 'none') return false;
  return Boolean(env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_EXPORTER_OTLP_ENDPOINT);
}

/**
 * The exporter's endpoint, headers and timeout from the standard variables of the environment
 * the gateway was given (not necessarily this process's own).
 */
function exporterOptions(env: NodeJS.ProcessEnv): { url: string; headers: Record<string, string>; timeoutMillis?: number } {
  const base = env.OTEL_EXPORTER_OTLP_ENDPOINT?.replace(/\/+$/, '');
  const url = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || `${base}/v1/traces`;
  const headers: Record<string, string> = {};
  for (const pair of `${env.OTEL_EXPORTER_OTLP_HEADERS ?? ''},${env.OTEL_EXPORTER_OTLP_TRACES_HEADERS ?? ''}`.split(',')) {
    const eq = pair.indexOf('=');
    if (eq > 0) headers[decodeURIComponent(pair.slice(0, eq).trim())] = decodeURIComponent(pair.slice(eq + 1).trim());
  }
  const timeout = Number(env.OTEL_EXPORTER_OTLP_TRACES_TIMEOUT ?? env.OTEL_EXPORTER_OTLP_TIMEOUT);
  return { url, headers, ...(Number.isFinite(timeout) && timeout > 0 ? { timeoutMillis: timeout } : undefined) };
}

/** OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG, as the specification names them. Default: parent-based, always on. */
function samplerFrom(env: NodeJS.ProcessEnv): Sampler {
  const ratio = Number(env.OTEL_TRACES_SAMPLER_ARG ?? '1');
  const r = Number.isFinite(ratio) && ratio >= 0 && ratio <= 1 ? ratio : 1;
  switch (env.OTEL_TRACES_SAMPLER) {
    case 'always_off':
      return new AlwaysOffSampler();
    case 'traceidratio':
      return new TraceIdRatioBasedSampler(r);
    case 'parentbased_always_off':
      return new ParentBasedSampler({ root: new AlwaysOffSampler() });
    case 'parentbased_traceidratio':
      return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(r) });
    case 'always_on':
      return new AlwaysOnSampler();
    default:
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
  }
}

/**
 * OpenTelemetry traces of the request path: one server span per request, continuing a W3C
 * `traceparent` from the client, with child spans for authentication, the access check and
 * the upstream call, whose context goes to the upstream in `traceparent`/`tracestate`.
 * Exported with OTLP/HTTP to the endpoint of the standard OTEL_* variables; without one, none
 * of this exists (the gateway holds `null` and the request path skips every call).
 *
 * Span attributes are PHI-safe: the route template, the method, the status and the gateway's
 * error code; never the raw path, the query, a header value, a body or the client's address.
 */
export class Tracing {
  private readonly provider: BasicTracerProvider;
  private readonly tracer;
  private readonly propagator = new W3CTraceContextPropagator();

  constructor(env: NodeJS.ProcessEnv, version: string) {
    this.provider = new BasicTracerProvider({
      resource: resourceFromAttributes({ 'service.name': env.OTEL_SERVICE_NAME || 'api-gateway', 'service.version': version }),
      sampler: samplerFrom(env),
      spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter(exporterOptions(env)))],
    });
    this.tracer = this.provider.getTracer('api-gateway', version);
  }

  /** The server span of a request, continuing the client's trace when it sent a valid traceparent. */
  startServer(method: string, headers: IncomingHttpHeaders): Span {
    const parent = headers.traceparent === undefined ? ROOT_CONTEXT : this.propagator.extract(ROOT_CONTEXT, headers, HEADERS_GETTER);
    return this.tracer.startSpan(`${method}`, { kind: SpanKind.SERVER, attributes: { 'http.request.method': method } }, parent);
  }

  startChild(parent: Span, name: string, kind: SpanKind = SpanKind.INTERNAL, attributes?: Attributes): Span {
    return this.tracer.startSpan(name, { kind, attributes }, trace.setSpan(ROOT_CONTEXT, parent));
  }

  /** The header list sent upstream, with the trace context of `span` in place of the client's. */
  inject(headers: string[], span: Span): string[] {
    const carrier: Record<string, string> = {};
    this.propagator.inject(trace.setSpan(ROOT_CONTEXT, span), carrier, { set: (c, k, v) => (c[k] = v) });
    const out: string[] = [];
    for (let i = 0; i < headers.length; i += 2) if (headers[i] !== 'traceparent' && headers[i] !== 'tracestate') out.push(headers[i]!, headers[i + 1]!);
    for (const [k, v] of Object.entries(carrier)) out.push(k, v);
    return out;
  }

  /** `status` 0: no response came (a client span that failed); the span is an error without a status code. */
  static endWithStatus(span: Span, status: number, errorCode: string | null): void {
    if (status !== 0) span.setAttribute('http.response.status_code', status);
    if (errorCode !== null) span.setAttribute('error.type', errorCode);
    if (status >= 500 || status === 0) span.setStatus({ code: SpanStatusCode.ERROR });
    span.end();
  }

  /** `server.address` and `server.port` of an upstream origin, as the HTTP conventions name them. */
  static setServer(span: Span, origin: string): void {
    try {
      const url = new URL(origin);
      span.setAttribute('server.address', url.hostname.replace(/^\[|\]$/g, ''));
      span.setAttribute('server.port', Number(url.port) || (url.protocol === 'https:' ? 443 : 80));
    } catch {
      // An origin from the config is always a URL; nothing to add otherwise.
    }
  }

  async shutdown(): Promise<void> {
    await this.provider.shutdown();
  }
}

/**
 * The trace id of a traceparent that W3C Trace Context accepts (as the propagator does when
 * tracing is on), for the access log when tracing is off: version not ff, version 00 exactly
 * 55 characters, trace id and parent id not all zero.
 */
export function traceIdOf(traceparent: string | string[] | undefined): string | null {
  if (typeof traceparent !== 'string' || traceparent.length < 55) return null;
  const m = TRACEPARENT.exec(traceparent);
  if (m === null) return null;
  const [, version, traceId, parentId] = m;
  if (version === 'ff' || (version === '00' && traceparent.length !== 55)) return null;
  if (traceId === '00000000000000000000000000000000' || parentId === '0000000000000000') return null;
  return traceId!;
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(?:-.*)?$/;
