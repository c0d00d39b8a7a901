/** RFC 6750: the challenge of a 401, saying that a Bearer token is expected. */
export const BEARER_CHALLENGE = 'Bearer realm="api-gateway"';

/** The challenge of a 401 for a token that was presented and refused, without echoing it. */
export const INVALID_TOKEN: Readonly<Record<string, string>> = Object.freeze({ 'www-authenticate': `${BEARER_CHALLENGE}, error="invalid_token"` });
