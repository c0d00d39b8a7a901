import { z } from 'zod';

/**
 * Field types shared by the slices of the routes-file schema (each stage and the upstream
 * services own theirs): durations, paths, header names, permissions. Errors name what to write.
 */

const SEGMENT = /^[A-Za-z0-9\-._~!$&'()*+,;=@%]+$/;

/** A duration in milliseconds, 1 ms to 1 hour. */
export const ms = (what: string) => z.number().int().min(1, `${what} must be at least 1 ms`).max(3_600_000, `${what} must be at most 3600000 ms`);

/** An absolute, normalised path: the form the gateway matches after canonicalising a request's. */
export const absolutePath = (what: string) =>
  z
    .string()
    .refine((p) => p.startsWith('/'), `${what} must start with /`)
    .refine(
      (p) => p === '/' || p.split('/').slice(1).every((s, i, all) => (s === '' ? i === all.length - 1 : SEGMENT.test(s) && s !== '.' && s !== '..')),
      `${what} must be a normalised path: no empty, "." or ".." segments and no spaces`,
    );

/** A path pattern: literal segments and named parameters such as :patientId. */
export const patternPath = z
  .string()
  .refine((p) => p.startsWith('/'), 'pattern must start with /')
  .refine(
    (p) => p.split('/').slice(1).every((s) => /^:[A-Za-z_][A-Za-z0-9_]*$/.test(s) || (SEGMENT.test(s) && !s.includes(':'))),
    'pattern segments are literals or named parameters such as :patientId',
  );

export const headerName = z.string().regex(/^[A-Za-z0-9-]+$/, 'header names are letters, digits and -');

/** Route and service names: they label metrics and logs. */
export const NAME = /^[a-z0-9][a-z0-9-_.]*$/;
