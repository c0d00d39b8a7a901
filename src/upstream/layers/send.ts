import type { UpstreamDispatch } from '../call.js';

/** The innermost dispatch: one try, on the chosen instance's keep-alive pool for the route's settings. */
export const send: UpstreamDispatch = (call, handler) => {
  call.instance!.pool(call.settings.pool).dispatch(
    {
      path: call.target,
      method: call.method,
      headers: call.headers,
      body: call.body,
      // The deadline layer keeps the response deadline (precise, and covering queued requests).
      headersTimeout: 0,
      bodyTimeout: call.settings.bodyIdleTimeoutMs,
    },
    handler,
  );
};
