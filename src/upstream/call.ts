import type { IncomingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { Instance, PoolSettings } from './instance.js';
import type { UpstreamService } from './service.js';

type Controller = Dispatcher.DispatchController;

/**
 * What one upstream call hands back, try by try: undici's handler interface, except that a layer
 * may fail a call before any try reached an instance (the breaker, no instance in rotation, a
 * deadline passed while queued), with no controller.
 */
export interface UpstreamHandler {
  onRequestStart(controller: Controller, context: unknown): void;
  onResponseStart(controller: Controller, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void;
  onResponseData(controller: Controller, chunk: Buffer): void;
  onResponseEnd(controller: Controller, trailers: IncomingHttpHeaders): void;
  onResponseError(controller: Controller | null, error: Error): void;
}

/** What a route's calls share: the deadline, the body idle time and the pool of its connections. */
export interface UpstreamSettings {
  /** Response-head deadline across all tries (the route's timeoutMs). */
  readonly timeoutMs: number;
  readonly bodyIdleTimeoutMs: number;
  readonly pool: PoolSettings;
}

/** A request body: none, one the gateway holds (replayable), or the client's stream. */
export type UpstreamBody = Buffer | Readable | null;

/**
 * One request to a service, across its tries. The forward stage fills in what is sent; the layers
 * write where it goes (`instance`), what was tried and how often it was retried.
 */
export class UpstreamCall {
  /** The instance of the try under way (or the last one). */
  instance: Instance | null = null;
  /** Instances tried before this one; null while the call may not be retried. */
  tried: Instance[] | null = null;
  retries = 0;
  readonly deadline: number;

  constructor(
    readonly service: UpstreamService,
    readonly settings: UpstreamSettings,
    readonly method: string,
    /** Path and query, rewritten and transformed once for every try. */
    readonly target: string,
    readonly headers: string[],
    readonly body: UpstreamBody,
    /** Safe to send twice: an idempotent method with no body, or one the gateway holds. */
    readonly replayable: boolean,
    /** The consistent-hash key, when the service hashes. */
    readonly hashKey: string | undefined,
    /** The client's side: a call whose client has gone is not retried. */
    readonly client: { readonly destroyed: boolean },
    /** performance.now() when the call began. */
    readonly startedAt: number,
  ) {
    this.deadline = startedAt + settings.timeoutMs;
  }
}

/** Sends a call on, answering through `handler`. */
export type UpstreamDispatch = (call: UpstreamCall, handler: UpstreamHandler) => void;

/** One concern of the upstream call, wrapped around the ones inside it, as undici's interceptors are. */
export type UpstreamLayer = (next: UpstreamDispatch) => UpstreamDispatch;

/** The layers from the outermost in, around the dispatch that sends a try. */
export function compose(layers: readonly UpstreamLayer[], send: UpstreamDispatch): UpstreamDispatch {
  return layers.reduceRight<UpstreamDispatch>((next, layer) => layer(next), send);
}

/** A handler that passes everything on: a layer overrides what it watches. */
export class Decorator implements UpstreamHandler {
  constructor(protected readonly handler: UpstreamHandler) {}
  onRequestStart(controller: Controller, context: unknown): void {
    this.handler.onRequestStart(controller, context);
  }
  onResponseStart(controller: Controller, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    this.handler.onResponseStart(controller, statusCode, headers, statusMessage);
  }
  onResponseData(controller: Controller, chunk: Buffer): void {
    this.handler.onResponseData(controller, chunk);
  }
  onResponseEnd(controller: Controller, trailers: IncomingHttpHeaders): void {
    this.handler.onResponseEnd(controller, trailers);
  }
  onResponseError(controller: Controller | null, error: Error): void {
    this.handler.onResponseError(controller, error);
  }
}
