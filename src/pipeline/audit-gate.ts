import { z } from 'zod';
import type { AuditTrail } from '../audit/audit-trail.js';
import { PASS, stage, type Refusal, type RouteStage } from './exchange.js';

/** The routes-file slice: the route carries PHI (fail-closed protections apply). */
export const auditGateSchema = {
  phi: z.boolean().default(false),
};

const UNAUDITABLE: Refusal = Object.freeze({
  code: 'GW_AUDIT_UNAVAILABLE',
  detail: 'the audit trail cannot record this request; PHI is not served unaudited',
  headers: { 'retry-after': '30' },
});

/**
 * Stage: PHI is never served unaudited. While the audit spool cannot take another event (full,
 * or its disk unwritable) a PHI route answers 503; a request let in may use the spool's headroom
 * for its event. Only on PHI routes, and only with the audit trail on.
 */
export const auditGate: RouteStage<z.output<z.ZodObject<typeof auditGateSchema>>, { readonly audit: AuditTrail | null }> = {
  name: 'audit-gate',
  create(route, { audit }) {
    if (!route.phi || audit === null) return null;
    return stage('audit-gate', (ex) => {
      if (!audit.accepting) return UNAUDITABLE;
      ex.auditAdmitted = true;
      return PASS;
    });
  },
};
