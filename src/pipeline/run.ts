import { ServerResponse, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { writeProblem } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { traceIdOf, type Tracing } from '../observability/tracing.js';
import type { ClientAddress } from './client-address.js';
import { ANSWERED, Exchange, PASS, type Refusal, type Stage, type Verdict } from './exchange.js';
import { bearerFromProtocols } from './websocket.js';

const UPGRADE_WITH_BODY: Refusal = { code: 'GW_BAD_REQUEST', detail: 'a request that asks for an upgrade cannot carry a body' };

export interface Doors {
  /** The gateway's own endpoints (/health*, /metrics), matched on the raw path. */
  readonly own: readonly Stage[];
  readonly isOwn: (url: string) => boolean;
  /** Everything else: the entry stages, after which the matched route's chain runs. */
  readonly entry: readonly Stage[];
}

export interface RunnerDeps {
  readonly addresses: ClientAddress;
  readonly tracing: Tracing | null;
  /** Strict-Transport-Security on every answer, as [name, value]; null without TLS. */
  readonly hsts: readonly string[] | null;
  readonly finish: (ex: Exchange, req: IncomingMessage, res: ServerResponse) => void;
  readonly logger: Logger;
}

const EXCHANGE = Symbol('exchange');
type WithExchange = ServerResponse & { [EXCHANGE]?: Exchange };

/**
 * Drives a request through its stages. It opens the exchange, then runs the entry stages and the
 * matched route's chain in order: synchronously while each verdict is immediate, resuming in a
 * callback only after a stage that waits on I/O. It opens and ends a span per traced stage,
 * turns a refusal into the one problem writer, and hands the exchange to the exit phase when
 * the response closes. No stage calls the next one.
 */
export class Runner {
  private readonly onClose: (this: WithExchange) => void;

  constructor(
    private readonly doors: Doors,
    private readonly deps: RunnerDeps,
  ) {
    const finish = deps.finish;
    // One listener for every response ('close' follows 'finish', or an abort): no closure per request.
    this.onClose = function (this: WithExchange) {
      finish(this[EXCHANGE]!, this.req, this);
    };
  }

  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    const own = this.doors.isOwn(req.url!);
    const ex = this.open(req, !own);
    (res as WithExchange)[EXCHANGE] = ex;
    res.on('close', this.onClose);
    this.run(ex, req, res, own ? this.doors.own : this.doors.entry, 0);
  };

  /**
   * A request with Upgrade (Node hands those over with the raw socket): the same doors and
   * chains, with a response object written onto the socket, so that every refusal is the same
   * JSON error and the exit phase runs as for any request. A WebSocket route's last stage takes
   * the socket over; any other route answers as plain HTTP and the connection then ends (its
   * parser is gone). A request that also declares a body is refused: its bytes would not reach
   * the stages.
   */
  readonly handleUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const res = new ServerResponse(req);
    res.assignSocket(socket as Socket);
    res.shouldKeepAlive = false;
    res.once('finish', () => socket.end());
    socket.on('error', () => socket.destroy());
    const bearer = bearerFromProtocols(req);
    const own = this.doors.isOwn(req.url!);
    const ex = this.open(req, !own);
    ex.upgrade = { socket, head, bearer };
    const finish = this.deps.finish;
    let finished = false;
    ex.closeExchange = () => {
      if (finished) return;
      finished = true;
      finish(ex, req, res);
    };
    // The response closes with its socket; a WebSocket's exchange closes with the WebSocket (websocket.ts).
    res.on('close', () => {
      if (!ex.webSocketOpen) ex.closeExchange!();
    });
    if (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0') return this.refuse(ex, res, UPGRADE_WITH_BODY);
    if (req.headers['transfer-encoding'] !== undefined) return this.refuse(ex, res, UPGRADE_WITH_BODY);
    this.run(ex, req, res, own ? this.doors.own : this.doors.entry, 0);
  };

  private open(req: IncomingMessage, traced: boolean): Exchange {
    const { addresses, tracing } = this.deps;
    const peer = addresses.peer(req.socket.remoteAddress);
    const trusted = addresses.isTrusted(peer);
    const ex = new Exchange('', performance.now(), peer, trusted, trusted ? addresses.clientIp(peer, req.headers['x-forwarded-for']) : peer);
    ex.answerHeaders = this.deps.hsts;
    if (!traced) return ex;
    if (tracing !== null) {
      ex.span = tracing.startServer(req.method!, req.headers);
      ex.traceId = ex.span.spanContext().traceId;
    } else if (req.headers.traceparent !== undefined) ex.traceId = traceIdOf(req.headers.traceparent);
    return ex;
  }

  private run(ex: Exchange, req: IncomingMessage, res: ServerResponse, chain: readonly Stage[], from: number): void {
    try {
      for (let i = from; i < chain.length; i++) {
        const current = chain[i]!;
        if (current.traced && ex.span !== null) ex.stageSpan = this.deps.tracing!.startChild(ex.span, current.name);
        const verdict = current.handle(ex, req, res);
        if (verdict instanceof Promise) {
          verdict.then((v) => this.resume(ex, req, res, chain, i, v)).catch((err: unknown) => this.fail(ex, res, err));
          return;
        }
        if (ex.stageSpan !== null) this.endStage(ex, verdict);
        if (verdict !== PASS) return this.settle(ex, res, verdict);
      }
      this.enterRoute(ex, req, res, chain);
    } catch (err) {
      this.fail(ex, res, err);
    }
  }

  private resume(ex: Exchange, req: IncomingMessage, res: ServerResponse, chain: readonly Stage[], i: number, verdict: Verdict): void {
    if (ex.stageSpan !== null) this.endStage(ex, verdict);
    if (verdict === PASS) this.run(ex, req, res, chain, i + 1);
    else this.settle(ex, res, verdict);
  }

  /** After the entry: the matched route's chain, or the 404/405 route-match left. */
  private enterRoute(ex: Exchange, req: IncomingMessage, res: ServerResponse, chain: readonly Stage[]): void {
    if (chain !== this.doors.entry) throw new Error(`the chain of ${ex.route?.name ?? 'an own endpoint'} ended without an answer`);
    const route = ex.route;
    if (route === null) return this.refuse(ex, res, ex.miss!);
    if (ex.span !== null) {
      ex.span.updateName(`${req.method} ${route.template}`);
      ex.span.setAttribute('http.route', route.template);
    }
    this.run(ex, req, res, route.chain, 0);
  }

  private settle(ex: Exchange, res: ServerResponse, verdict: Refusal | typeof ANSWERED): void {
    if (verdict !== ANSWERED) this.refuse(ex, res, verdict);
  }

  /** Every refusal of every stage ends here, in the one error shape. */
  private refuse(ex: Exchange, res: ServerResponse, refusal: Refusal): void {
    ex.errorCode = refusal.code;
    ex.refusal = refusal;
    writeProblem(res, refusal.code, ex.id, refusal.detail, refusal.headers, ex.answerHeaders);
  }

  private fail(ex: Exchange, res: ServerResponse, err: unknown): void {
    this.deps.logger.error({ err, request_id: ex.id }, 'unhandled error');
    ex.errorCode = 'GW_INTERNAL';
    writeProblem(res, 'GW_INTERNAL', ex.id, 'the gateway failed to handle the request', undefined, ex.answerHeaders);
  }

  /** Ends the span of the traced stage under way with the stage's verdict. */
  private endStage(ex: Exchange, verdict: Verdict): void {
    const span = ex.stageSpan!;
    ex.stageSpan = null;
    if (verdict !== PASS && verdict !== ANSWERED) span.setAttribute('error.type', verdict.code);
    span.end();
  }
}
