import { z } from 'zod';
import type { AuditTrail } from '../audit/audit-trail.js';
import { PASS, stage, type Exchange, type Refusal, type RouteStage } from './exchange.js';

/** The routes-file slice: the route carries PHI (fail-closed protections apply), and how its requests are audited. */
export const auditGateSchema = {
  phi: z.boolean().default(false),
  /**
   * `write-ahead`: the access record is durable on disk before the answer's head leaves, so a
   * crash cannot lose the record of data that reached a client. Every `phi: true` route is
   * write-ahead; another authenticated route may ask for it. Without it, the event is appended
   * when the exchange ends and synced within 10 ms.
   */
  audit: z.literal('write-ahead').optional(),
};

export const UNAUDITABLE: Refusal = Object.freeze({
  code: 'GW_AUDIT_UNAVAILABLE',
  detail: 'the audit trail cannot record this request; PHI is not served unaudited',
  headers: { 'retry-after': '30' },
});

type AuditGateRoute = z.output<z.ZodObject<typeof auditGateSchema>> & { readonly auth: 'required' | 'public' };

/**
 * Stage: PHI is never served unaudited. While the audit spool cannot take another event (full,
 * or its disk unwritable) a PHI route answers 503; a request let in may use the spool's headroom
 * for its event. On a write-ahead route (every PHI route with authentication, and `audit:
 * write-ahead`) the request's access record is appended here, before the upstream is called, and
 * its commit runs while the call is in flight; the answer waits for it (`recordedNow`, `awaitRecord`). Only
 * with the audit trail on.
 */
export const auditGate: RouteStage<AuditGateRoute, { readonly audit: AuditTrail | null }> = {
  name: 'audit-gate',
  create(route, { audit }) {
    if (audit === null) return null;
    const writeAhead = route.auth === 'required' && (route.phi || route.audit === 'write-ahead');
    if (writeAhead) {
      return stage('audit-gate', (ex, req) => {
        if (!audit.accepting) return UNAUDITABLE;
        ex.accessRecord = audit.recordAccess(ex, req.method!);
        if (ex.accessRecord === null) return UNAUDITABLE;
        ex.auditAdmitted = true;
        return PASS;
      });
    }
    if (!route.phi) return null;
    return stage('audit-gate', (ex) => {
      if (!audit.accepting) return UNAUDITABLE;
      ex.auditAdmitted = true;
      return PASS;
    });
  },
};

/**
 * True when the exchange's answer may leave now: its route keeps no access record, or the record
 * is durable, which is the common case, as its commit ran while the upstream answered.
 */
export function recordedNow(ex: Exchange): boolean {
  const record = ex.accessRecord;
  if (record === null || ex.auditWaitMs >= 0) return true;
  if (!record.trail.isDurable(record)) return false;
  ex.auditWaitMs = 0;
  return true;
}

/** Calls `done(true)` once the access record is durable, or `done(false)` if it cannot be made so; never synchronously. */
export function awaitRecord(ex: Exchange, done: (ok: boolean) => void): void {
  const record = ex.accessRecord!;
  const since = performance.now();
  record.trail.whenDurable(record, (ok) => {
    ex.auditWaitMs = performance.now() - since;
    done(ok);
  });
}
