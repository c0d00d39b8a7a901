import { z } from 'zod';
import { PASS, stage, type Refusal, type RouteStage } from './exchange.js';
import { hasBody } from './read-body.js';

const MEDIA_TYPE = /^[a-z0-9!#$&^_.+-]+\/[a-z0-9!#$&^_.+-]+$/;

/** The routes-file slice: the media types a route's request bodies may have. */
export const contentTypeSchema = {
  accepts: z
    .array(z.string().trim().toLowerCase().regex(MEDIA_TYPE, 'accepts lists media types such as application/json (type/subtype, no parameters)'))
    .min(1)
    .optional(),
};

/**
 * Stage: a request with a body whose Content-Type is not one the route accepts is refused with
 * 415 before anything reaches the upstream (parameters such as charset do not matter). Requests
 * without a body pass. Only on routes that list `accepts`.
 */
export const contentType: RouteStage<z.output<z.ZodObject<typeof contentTypeSchema>>, unknown> = {
  name: 'content-type',
  create(route) {
    if (route.accepts === undefined) return null;
    const accepted: ReadonlySet<string> = new Set(route.accepts);
    const refusal: Refusal = Object.freeze({ code: 'GW_UNSUPPORTED_MEDIA_TYPE', detail: `send the body as ${route.accepts.join(' or ')}` });
    return stage('content-type', (_ex, req) => {
      if (!hasBody(req)) return PASS;
      const type = req.headers['content-type'];
      const semicolon = type === undefined ? -1 : type.indexOf(';');
      const essence = type === undefined ? '' : (semicolon === -1 ? type : type.slice(0, semicolon)).trim().toLowerCase();
      return accepted.has(essence) ? PASS : refusal;
    });
  },
};
