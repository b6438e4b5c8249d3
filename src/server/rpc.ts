import * as grpc from '@grpc/grpc-js';
import { isDiskFull } from '../util/disk-full.ts';
import type { Identity } from '../crypto/pki.ts';
import type { Capability } from '../state/policy.ts';
import { callerIdentity } from '../transport/auth.ts';
import { errorTrailers } from '../transport/error-details.ts';
import { isMalformedRequest } from '../transport/proto.ts';
import { boundedSource } from './anonymous-audit.ts';
import { ServiceError, refuse, toStatus, type ErrorStatus } from './errors.ts';
import type { RequestContext } from './context.ts';

/** The identity made by `coffer init`, bound to the built-in root policy (every capability on every path). */
export const ADMIN_IDENTITY = 'admin';
/** Trailing metadata key a follower sets when a joiner must go to the leader. */
export const LEADER_ADDRESS_METADATA = 'coffer-leader-address';

export type Call<Request> = {
  request: Request;
  getAuthContext(): ReturnType<grpc.ServerUnaryCall<Request, unknown>['getAuthContext']>;
  getPeer(): string;
};

/**
 * Who a request was from and what it was about, as the handler learned it (for the audit log):
 * one target, or for a request about many names (a batch of puts) one target per name, each
 * audited as a record of its own.
 */
interface AuditContext {
  identity: Identity | null;
  target: string;
  targets: readonly string[];
}
const auditContext = new WeakMap<object, AuditContext>();

/** An audited target is at most this long: names are validated before they are noted, this is the backstop. */
export const AUDIT_TARGET_CHARS_MAX = 512;

function noteCaller(call: object, identity: Identity, target?: string): void {
  const context = auditContext.get(call);
  if (context === undefined) return;
  context.identity = identity;
  if (target !== undefined) context.target = boundedTarget(target);
}

/** Records what a request is about when no authorization names it (e.g. a secret name). */
export function noteTarget(call: object, target: string): void {
  const context = auditContext.get(call);
  if (context !== undefined) context.target = boundedTarget(target);
}

/**
 * Records the names a request is about, one audit record each (a batch of puts: every access to a
 * name is audited, as single puts would be). Names are validated before they are noted.
 */
export function noteTargets(call: object, targets: readonly string[]): void {
  const context = auditContext.get(call);
  if (context !== undefined) context.targets = targets.map(boundedTarget);
}

function boundedTarget(target: string): string {
  return target.length <= AUDIT_TARGET_CHARS_MAX
    ? target
    : `${target.slice(0, AUDIT_TARGET_CHARS_MAX)}... (${target.length} characters)`;
}

export interface MethodOptions {
  /**
   * Reachable without a certificate (the Join service: a joiner has none yet). Every other
   * method refuses such a caller before its handler runs, so nothing of the request is read,
   * noted or audited.
   */
  readonly anonymous?: boolean;
}

export const UNAUTHENTICATED_DETAILS =
  "a certificate issued by this cluster's CA is required, within its dates (a login's certificate that ended: log in again)";

/**
 * How every request starts: the caller is authenticated from its TLS certificate first; one
 * without a certificate of this cluster is refused unless the method is for anonymous callers.
 * Returns the refusal (already audited and counted) or the audit context to run the handler in.
 */
function begin(
  ctx: RequestContext,
  method: string,
  call: Call<unknown> & { getPeer(): string },
  options: MethodOptions,
): Promise<ErrorStatus> | AuditContext {
  const identity = callerIdentity(call, ctx.clusterId);
  if (identity === null && options.anonymous !== true) {
    const started = performance.now();
    ctx.metrics.rpc(method, 'UNAUTHENTICATED', 0);
    ctx.metrics.refused('unauthenticated');
    return ctx.anonymousAudit
      .record({ method, source: call.getPeer(), outcome: 'denied', code: 'UNAUTHENTICATED' })
      .then(
        // The reason and nothing else: a caller who proved nothing learns nothing more.
        () => toStatus(refuse('UNAUTHENTICATED', UNAUTHENTICATED_DETAILS)),
        (auditError: unknown) => auditFailed(ctx, method, auditError, started),
      );
  }
  const context: AuditContext = { identity, target: '', targets: [] };
  auditContext.set(call, context);
  return context;
}

/** Why the request itself is refused before its handler sees it (it did not decode), or null. */
function malformed(ctx: RequestContext, method: string, call: Call<unknown>): ServiceError | null {
  if (!isMalformedRequest(call.request)) return null;
  ctx.metrics.refused('malformed');
  return refuse('MALFORMED_REQUEST', `the request is not a valid ${method} message (protobuf)`);
}

function auditFailed(ctx: RequestContext, method: string, auditError: unknown, started: number): ErrorStatus {
  ctx.log.error(
    { event: 'audit-failed', method, err: auditError, durationMs: Math.round(performance.now() - started) },
    'the audit record could not be written: the request fails',
  );
  ctx.metrics.auditFailed();
  // A full disk says so, and where the rest of the cluster can serve.
  if (isDiskFull(auditError))
    return toStatus(
      refuse(
        'DISK_FULL',
        "this manager's disk is full, so its audit log cannot be written: the request was refused (another manager can serve; this one resumes once space is freed)",
      ),
    );
  return toStatus(refuse('AUDIT_UNAVAILABLE', 'the audit log cannot be written; the request was refused'));
}

/**
 * Why an authenticated request is refused before its handler runs, or null: the audit log is
 * broken (fail closed), or the client went over its rate on this manager.
 */
function refusedBeforeRunning(ctx: RequestContext, identity: Identity | null): ServiceError | null {
  if (ctx.audit.broken !== null)
    return refuse('AUDIT_UNAVAILABLE', 'the audit log cannot be written; requests are refused until it can');
  if (identity === null || identity.role !== 'client') return null;
  // A removed manager may not know it is out of date; it sends clients elsewhere.
  if (ctx.trust.selfRemoved())
    return refuse('MANAGER_REMOVED', `manager ${ctx.nodeId} was removed from the cluster; ask another manager`, {
      nodeId: String(ctx.nodeId),
    });
  const limited = ctx.rateLimit.request(identity.id);
  if (limited === null) return null;
  ctx.metrics.refused('rate-limited');
  return refuse('RATE_LIMITED', limited.message, { retryAfterMs: String(limited.retryAfterMs) });
}

/**
 * Runs a unary handler: refusals become their status in one place, and every request, allowed
 * or denied, is written to the audit log before the reply leaves. If the audit log cannot be
 * written the request fails (fail closed); while it is broken, requests are refused before they run.
 */
/** A reply may name buffers (a secret's value) to be zeroed once it is serialized: `{ ..., [WIPE_AFTER_REPLY]: [value] }`. */
export const WIPE_AFTER_REPLY: unique symbol = Symbol('wipe after reply');
interface WipedAfterReply {
  readonly [WIPE_AFTER_REPLY]?: readonly Buffer[];
}

export function unary<Request, Response>(
  ctx: RequestContext,
  method: string,
  handler: (call: Call<Request>) => Promise<Response>,
  options: MethodOptions = {},
) {
  const audited = !method.startsWith('Peer.');
  return (call: grpc.ServerUnaryCall<Request, Response>, callback: grpc.sendUnaryData<Response>): void => {
    const started = performance.now();
    const context = begin(ctx, method, call, options);
    if (context instanceof Promise) {
      void context.then((status) => callback(serviceErrorOf(status)));
      return;
    }
    const refusal = malformed(ctx, method, call) ?? (audited ? refusedBeforeRunning(ctx, context.identity) : null);
    const run = refusal !== null ? Promise.reject(refusal) : handler(call);
    run
      .then(
        (response) => ({ response, error: null as unknown }),
        (error: unknown) => ({ response: null, error }),
      )
      .then(async ({ response, error }) => {
        const status = await finishRequest(ctx, method, call, context, started, error, audited);
        // grpc-js serializes the reply within callback(): the plaintext buffers it named go after it (or unsent).
        const wipe = (): void => {
          for (const buffer of (response as WipedAfterReply | null)?.[WIPE_AFTER_REPLY] ?? []) buffer.fill(0);
        };
        if (status.code === grpc.status.OK) {
          callback(null, response as Response);
          return wipe();
        }
        wipe();
        callback(serviceErrorOf(status, error instanceof LeaderRedirect ? redirectMetadata(error.address) : undefined));
      })
      .catch((error: unknown) => {
        ctx.log.error({ event: 'rpc-failed', method, err: error }, 'request failed');
        callback(serviceErrorOf(toStatus(null)));
      });
  };
}

/**
 * What every request does as it ends: its audit record (allowed, denied or failed; a request
 * whose record cannot be written fails), one log line, the metrics. Returns the final status.
 * A caller without a certificate (only the Join service lets one in) is audited as an anonymous
 * request: a small, rate-limited record.
 */
async function finishRequest(
  ctx: RequestContext,
  method: string,
  call: Call<unknown> & { getPeer(): string },
  context: AuditContext,
  started: number,
  error: unknown,
  audited: boolean,
): Promise<ErrorStatus> {
  let status: ErrorStatus = error === null ? OK : toStatus(error);
  if (status.code === grpc.status.INTERNAL)
    ctx.log.error({ event: 'rpc-failed', method, err: error }, 'request failed');
  if (status.code === grpc.status.PERMISSION_DENIED || status.code === grpc.status.UNAUTHENTICATED)
    ctx.metrics.refused(status.code === grpc.status.UNAUTHENTICATED ? 'unauthenticated' : 'permission-denied');
  if (audited) {
    const outcome =
      status.code === grpc.status.OK
        ? 'allowed'
        : status.code === grpc.status.PERMISSION_DENIED || status.code === grpc.status.UNAUTHENTICATED
          ? 'denied'
          : 'failed';
    const code = grpc.status[status.code] ?? String(status.code);
    try {
      const identity = context.identity;
      // One record per name noted (appended in order, fsynced together), else one for the request.
      if (identity !== null && context.targets.length > 0)
        await Promise.all(
          context.targets.map((target) =>
            ctx.audit.append({ identity: identity.id, role: identity.role, method, target, outcome, code }),
          ),
        );
      else if (identity !== null)
        await ctx.audit.append({
          identity: identity.id,
          role: identity.role,
          method,
          target: context.target,
          outcome,
          code,
        });
      // An anonymous request whose handler named what it did (a manager that joined) is recorded in full.
      else if (context.target !== '')
        await ctx.audit.append({
          identity: '',
          role: '',
          method,
          target: `${context.target}, from ${boundedSource(call.getPeer())}`,
          outcome,
          code,
        });
      else await ctx.anonymousAudit.record({ method, source: call.getPeer(), outcome, code });
    } catch (auditError) {
      status = auditFailed(ctx, method, auditError, started);
    }
  }
  // One line per request: method, identity, status, duration; never the body. The members'
  // clock probes (two a second per member) only at debug.
  ctx.log[method === 'Peer.Clock' && status.code === grpc.status.OK ? 'debug' : 'info'](
    {
      event: 'rpc',
      method,
      identity: context.identity?.id ?? null,
      status: grpc.status[status.code],
      durationMs: Math.round(performance.now() - started),
    },
    'request',
  );
  ctx.metrics.rpc(method, grpc.status[status.code] ?? String(status.code), (performance.now() - started) / 1000);
  return status;
}

/**
 * A server-streaming handler with the same audit, log and metrics as `unary`: the handler does
 * every check first (so a refusal is a status, not half a stream), then returns the messages, a
 * list or an async iterable made as they are sent (a backup's records); a failure while that
 * iterable is read ends the stream INTERNAL, and is logged.
 */
export function serverStream<Request, Message>(
  ctx: RequestContext,
  method: string,
  handler: (call: Call<Request>) => Promise<Iterable<Message> | AsyncIterable<Message>>,
) {
  return (call: grpc.ServerWritableStream<Request, Message>): void => {
    const started = performance.now();
    const context = begin(ctx, method, call, {});
    if (context instanceof Promise) {
      void context.then((status) => call.emit('error', serviceErrorOf(status)));
      return;
    }
    const refusal = malformed(ctx, method, call) ?? refusedBeforeRunning(ctx, context.identity);
    const run = refusal !== null ? Promise.reject(refusal) : handler(call);
    run
      .then(
        (messages) => ({ messages, error: null as unknown }),
        (error: unknown) => ({ messages: [] as Iterable<Message> | AsyncIterable<Message>, error }),
      )
      .then(async ({ messages, error }) => {
        const status = await finishRequest(ctx, method, call, context, started, error, true);
        // emit('error') sends the status; destroy() would drop it and leave the client waiting.
        if (status.code !== grpc.status.OK) {
          call.emit('error', serviceErrorOf(status));
          return;
        }
        let cancelled = call.cancelled;
        call.once('cancelled', () => (cancelled = true));
        // Messages made as they are sent (a backup's records) stop being made when the client goes:
        // leaving the loop returns the iterator, which closes what it reads.
        for await (const message of messages) {
          if (cancelled) return;
          if (!call.write(message)) {
            // Wait for room, or for the client to go away (then nothing is kept waiting).
            await new Promise<void>((resolve) => {
              const done = (): void => {
                call.off('drain', done);
                call.off('cancelled', done);
                call.off('close', done);
                resolve();
              };
              call.once('drain', done);
              call.once('cancelled', done);
              call.once('close', done);
            });
          }
        }
        if (!cancelled) call.end();
      })
      .catch((error: unknown) => {
        ctx.log.error({ event: 'rpc-failed', method, err: error }, 'request failed');
        call.emit('error', serviceErrorOf(toStatus(null)));
      });
  };
}

export class LeaderRedirect extends ServiceError {
  readonly address: string;
  constructor(address: string) {
    const redirect = refuse(
      'JOIN_THROUGH_LEADER',
      `this manager is not the leader; join through the leader at ${address}`,
      { leaderAddress: address },
    );
    super(redirect.status, redirect.message, redirect.reason, redirect.metadata);
    this.address = address;
  }
}

export function redirectMetadata(address: string): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set(LEADER_ADDRESS_METADATA, address);
  return metadata;
}

const OK: ErrorStatus = { code: grpc.status.OK, details: '', reason: '', metadata: {} };

/**
 * A refusal as grpc-js sends it: status, message, and the trailers that carry its reason and
 * metadata (grpc-status-details-bin, coffer-error-reason), added to `trailers` if given.
 */
function serviceErrorOf(status: ErrorStatus, trailers?: grpc.Metadata): Partial<grpc.StatusObject> {
  return {
    code: status.code,
    details: status.details,
    metadata: errorTrailers(status.code, status.details, status, trailers),
  };
}

export function requireCaller(ctx: RequestContext, call: Call<unknown>): Identity {
  const identity = callerIdentity(call, ctx.clusterId);
  if (identity === null) throw refuse('UNAUTHENTICATED', UNAUTHENTICATED_DETAILS);
  noteCaller(call, identity);
  return identity;
}

/**
 * A manager that is a member now (voter or learner, as this manager's membership says), not just
 * one holding a certificate of this CA that was never removed: a manager of a restored copy of
 * this cluster, or one a forced new cluster left behind, must not propose here.
 */
export function requireMember(ctx: RequestContext, call: Call<unknown>): number {
  const identity = requireCaller(ctx, call);
  if (identity.role !== 'manager') throw refuse('WRONG_ROLE', 'this method is for managers only');
  const id = Number(identity.id);
  const refusal = ctx.trust.admits(id, identity.spki);
  if (refusal === 'this manager is locked') throw refuse('MANAGER_LOCKED', refusal);
  if (refusal !== null) throw refuse('NOT_A_MEMBER', refusal);
  return id;
}

/**
 * Authenticates a client and checks its policies for `capability` on `path`: the certificate
 * must be listed for its identity (not revoked), and the most specific matching rule must allow.
 */
export function authorize(ctx: RequestContext, call: Call<unknown>, capability: Capability, path: string): Identity {
  noteTarget(call, path);
  const identity = authenticateClient(ctx, call);
  const decision = ctx.state.access.decide(identity.id, capability, path);
  if (!decision.allowed) {
    const why =
      decision.rule === null
        ? 'no policy allows it'
        : `denied by policy "${decision.rule.policy}", rule "${decision.rule.path}"`;
    // What the message says, for programs: the capability and path asked for, and the deny rule if one decided.
    throw refuse('POLICY_DENIED', `identity "${identity.id}" may not ${capability} "${path}": ${why}`, {
      capability,
      path,
      ...(decision.rule === null ? {} : { policy: decision.rule.policy, rule: decision.rule.path }),
    });
  }
  return identity;
}

/** A client whose certificate is listed for its identity and not revoked. */
export function authenticateClient(ctx: RequestContext, call: Call<unknown>): Identity {
  const identity = requireCaller(ctx, call);
  if (identity.role !== 'client')
    throw refuse('WRONG_ROLE', 'this method is for clients; a manager certificate may not call it');
  // TLS checks a certificate's dates when a connection opens; a connection may outlive it (a
  // login's certificate lasts an hour), so every request checks again, by the cluster's time.
  const nowMs = ctx.clock.now();
  if (identity.notAfterMs <= nowMs)
    throw refuse(
      'CERTIFICATE_EXPIRED',
      `the certificate of identity "${identity.id}" ended at ${new Date(identity.notAfterMs).toISOString()}: ${identity.id.includes(':') ? 'log in again (coffer login)' : 'renew it (coffer identity renew) before it ends'}`,
      { notAfterMs: String(identity.notAfterMs) },
    );
  const access = ctx.state.access;
  if (!access.certificateValid(identity.id, identity.spki)) {
    const known = access.identities.get(identity.id);
    if (known === undefined)
      throw refuse('IDENTITY_UNKNOWN', `identity "${identity.id}" is not known to this cluster (yet)`);
    if (known.revoked) throw refuse('IDENTITY_REVOKED', `the certificate of identity "${identity.id}" was revoked`);
    if (known.role !== null && access.certificateKey(identity.id, identity.spki) !== undefined)
      throw refuse(
        'ROLE_REVOKED',
        `login role "${known.role}" was removed (or replaced): the certificates its logins got no longer work`,
        { role: known.role },
      );
    throw refuse(
      'CERTIFICATE_REVOKED',
      `this certificate was not issued to identity "${identity.id}" by this cluster, or it was revoked`,
    );
  }
  return identity;
}
