import * as grpc from '@grpc/grpc-js';
import type { HealthImplementation, ServingStatus } from 'grpc-health-check';
import type { NodeMetrics } from '../metrics/metrics.ts';
import type { BasicStatus } from '../raft/types.ts';
import type { Logger } from '../util/logger.ts';
import { callerIdentity } from '../transport/auth.ts';
import { healthService, isMalformedRequest, methodPath, tolerantService } from '../transport/proto.ts';
import { lazyHandlers } from './lazy-handlers.ts';

/** The service name of a manager's overall health, as the gRPC health protocol defines it. */
export const OVERALL_HEALTH = '';

/**
 * Longest service name a health request may ask about. The health library quotes the name in its
 * NOT_FOUND status, and a status over HTTP/2's header list limit (64 KiB) is never sent: the call
 * went unanswered and its connection stalled for seconds (found by npm run fuzz).
 */
export const HEALTH_SERVICE_NAME_CHARS_MAX = 256;

/** What a manager's health is decided from; a small surface so it can be tested alone. */
export interface HealthFacts {
  /** Null while the manager is locked (or stopped). */
  readonly raft: BasicStatus | null;
  readonly removed: boolean;
  readonly auditBroken: boolean;
  /** The replica stopped on an error (it refuses every request until the manager restarts). */
  readonly replicaFailed?: boolean;
  /** The replica stopped because the disk is full: the data directory to free space in. */
  readonly diskFull?: string | null;
  /** The commit index HEALTH_APPLY_GRACE_MS ago (CommitSamples), when known. */
  readonly committedBefore?: number;
}

/**
 * How long a committed entry may wait to be applied before the manager counts as catching up. A
 * busy manager always trails its commit index by the batch in hand (a leader under load commits
 * entries a turn before it applies them): counting that flapped a loaded leader's health a few
 * times a second, and a health check that caught it would have taken the leader out. So a
 * manager is behind when it has not applied what was committed this long ago, or, before it has
 * watched its commit index that long (just started), what is committed now: SERVING still
 * means caught up with everything committed before it was asked.
 */
export const HEALTH_APPLY_GRACE_MS = 500;
/** Samples of the commit index closer together than this are not kept (a flood of checks keeps a few). */
const COMMIT_SAMPLE_SPACING_MS = 50;

/**
 * The commit index as it was HEALTH_APPLY_GRACE_MS ago, from samples taken at each evaluation of
 * the health (every check and the node's housekeeping); undefined until the samples reach that far.
 */
export class CommitSamples {
  readonly #samples: Array<{ readonly atMs: number; readonly commit: number }> = [];

  /** Records `commit` as of `nowMs`; returns the commit index of HEALTH_APPLY_GRACE_MS ago, if known. */
  observe(nowMs: number, commit: number): number | undefined {
    const last = this.#samples[this.#samples.length - 1];
    if (last === undefined || nowMs - last.atMs >= COMMIT_SAMPLE_SPACING_MS)
      this.#samples.push({ atMs: nowMs, commit });
    const horizon = nowMs - HEALTH_APPLY_GRACE_MS;
    // Keep the newest sample at or before the horizon, and everything after it.
    while (this.#samples.length > 1 && this.#samples[1]!.atMs <= horizon) this.#samples.shift();
    const oldest = this.#samples[0]!;
    return oldest.atMs <= horizon ? oldest.commit : undefined;
  }
}

/**
 * SERVING only when this manager can answer a linearizable read now: it is unlocked, knows a
 * leader, and has applied what it knew to be committed HEALTH_APPLY_GRACE_MS ago (`committedBefore`;
 * without it, everything committed now; a follower's commit index will do: it trails the
 * leader's by a heartbeat at most). Also NOT_SERVING when it was removed, its audit log is
 * broken or its replica stopped, since it then refuses every request.
 */
export function healthOf(facts: HealthFacts): { status: ServingStatus; reason: string } {
  const raft = facts.raft;
  if (raft === null) return { status: 'NOT_SERVING', reason: 'locked' };
  if (facts.removed) return { status: 'NOT_SERVING', reason: 'removed from the cluster' };
  if (facts.diskFull !== undefined && facts.diskFull !== null)
    return {
      status: 'NOT_SERVING',
      reason: `disk full: free space in ${facts.diskFull} (the manager resumes by itself once there is)`,
    };
  if (facts.auditBroken) return { status: 'NOT_SERVING', reason: 'the audit log cannot be written' };
  if (facts.replicaFailed === true) return { status: 'NOT_SERVING', reason: 'the replica stopped on an error' };
  if (raft.lead === 0) return { status: 'NOT_SERVING', reason: 'no leader known' };
  if (raft.applied < (facts.committedBefore ?? raft.commit))
    return { status: 'NOT_SERVING', reason: `catching up: applied ${raft.applied} of ${raft.commit}` };
  return { status: 'SERVING', reason: raft.role === 'leader' ? 'leader' : `following ${raft.lead}` };
}

/**
 * `grpc.health.v1.Health` on the manager's port, from grpc-health-check. The status is computed
 * again on every Check (so it is never stale) and on the node's housekeeping (for Watch). Any
 * certificate of this cluster's CA may ask, with no policy; a caller without one is refused, as
 * on every other service of the port.
 */
export interface HealthServiceDeps {
  readonly server: Pick<grpc.Server, 'addService'>;
  readonly clusterId: string;
  /** This manager's facts now. */
  facts(): HealthFacts;
  readonly log: Logger;
  readonly metrics: NodeMetrics;
}

export class HealthService {
  /**
   * grpc-health-check's implementation, loaded at the first health call: the package parses its
   * .proto file when loaded (about 20 ms of every start otherwise). The service's definition
   * comes from the schema compiled into the build (healthService); the status kept here until
   * then is the implementation's first.
   */
  #implementation: Promise<{ health: HealthImplementation; handlers: grpc.UntypedServiceImplementation }> | null = null;
  readonly #deps: HealthServiceDeps;
  #last: ServingStatus = 'NOT_SERVING';
  readonly #commits = new CommitSamples();

  constructor(deps: HealthServiceDeps) {
    this.#deps = deps;
    const service = healthService();
    const later = lazyHandlers(service, 'the health service', async () => {
      const { handlers } = await this.#loaded();
      // The package names its handlers as grpc-js allows, by the method's name in camelCase.
      return (name, method) => handlers[name] ?? handlers[method.originalName ?? name];
    });
    // Tolerant decoding: a request that does not decode reaches the guard (INVALID_ARGUMENT once
    // the caller is authenticated) instead of being answered INTERNAL by grpc-js, before any check.
    deps.server.addService(tolerantService(service), this.#guard(service, later));
  }

  #loaded(): Promise<{ health: HealthImplementation; handlers: grpc.UntypedServiceImplementation }> {
    this.#implementation ??= import('grpc-health-check').then(({ HealthImplementation }) => {
      const health = new HealthImplementation({ [OVERALL_HEALTH]: this.#last });
      let handlers: grpc.UntypedServiceImplementation = {};
      health.addToServer({
        addService: (_service: unknown, implementation: grpc.UntypedServiceImplementation) => {
          handlers = implementation;
        },
      } as unknown as grpc.Server);
      return { health, handlers };
    });
    return this.#implementation;
  }

  /** Recomputes the status; the implementation tells watchers when it changes. */
  update(): ServingStatus {
    const facts = this.#deps.facts();
    const committedBefore = facts.raft === null ? undefined : this.#commits.observe(Date.now(), facts.raft.commit);
    const { status, reason } = healthOf(committedBefore === undefined ? facts : { ...facts, committedBefore });
    if (status !== this.#last) {
      this.#deps.log.info({ event: 'health', status, reason }, `health: ${status} (${reason})`);
      this.#last = status;
      // Once loaded, the implementation tells its watchers (none can watch before it is).
      void this.#implementation?.then(({ health }) => health.setStatus(OVERALL_HEALTH, this.#last));
    }
    return status;
  }

  #guard(
    service: grpc.ServiceDefinition,
    implementation: grpc.UntypedServiceImplementation,
  ): grpc.UntypedServiceImplementation {
    const clusterId = this.#deps.clusterId;
    const refusal = {
      code: grpc.status.UNAUTHENTICATED,
      details: "a certificate issued by this cluster's CA is required",
    };
    const guarded: grpc.UntypedServiceImplementation = {};
    for (const [method, handler] of Object.entries(implementation)) {
      guarded[method] = ((call: grpc.ServerUnaryCall<unknown, unknown>, callback?: grpc.sendUnaryData<unknown>) => {
        // Watch is server-streaming: an error event ends it with that status.
        const refuse = (status: { code: grpc.status; details: string }): void =>
          callback !== undefined ? callback(status) : void call.emit('error', status);
        if (callerIdentity(call, clusterId) === null) return refuse(refusal);
        if (isMalformedRequest(call.request)) {
          this.#deps.metrics.refused('malformed');
          return refuse({
            code: grpc.status.INVALID_ARGUMENT,
            details: `the request is not a valid ${methodPath(service, method)} message (protobuf)`,
          });
        }
        const asked = (call.request as { service?: unknown } | undefined)?.service;
        if (typeof asked === 'string' && asked.length > HEALTH_SERVICE_NAME_CHARS_MAX) {
          return refuse({
            code: grpc.status.INVALID_ARGUMENT,
            details: `a health service name has at most ${HEALTH_SERVICE_NAME_CHARS_MAX} characters; this one has ${asked.length}`,
          });
        }
        this.update();
        return (handler as (call: unknown, callback?: unknown) => void)(call, callback);
      }) as grpc.UntypedHandleCall;
    }
    return guarded;
  }
}
