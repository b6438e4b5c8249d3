/**
 * What an answer to a fuzzed request may be, by caller. Read from the server code (rpc.ts,
 * services.ts, the *-service.ts files, health.ts):
 *
 * - No request is answered INTERNAL, UNKNOWN, UNIMPLEMENTED or DATA_LOSS (a handler threw something
 *   it did not mean to, or a method the API lists is not served), and none goes unanswered until
 *   its deadline (a hang), except a long-lived stream that has already sent messages.
 * - A caller without a certificate gets UNAUTHENTICATED from every method before its handler runs
 *   (rpc.ts begin(); the guards in services.ts and health.ts for reflection and health), except on
 *   the Join service, whose methods are for callers without one: GetCaCertificate answers anyone,
 *   JoinCluster needs a valid token and an address that proves the joiner's key; and Auth.Login,
 *   which anyone may call with a proof (none configured here: it never succeeds).
 * - A caller with a certificate of the cluster CA is never UNAUTHENTICATED: what it may do is
 *   decided by identity and policy (PERMISSION_DENIED), not by authentication.
 * - JoinCluster never succeeds here: the fuzzer cannot make an address answer with a joiner's key.
 * - Beyond the caller's rights, only a refusal (PERMISSION_DENIED, INVALID_ARGUMENT for a request
 *   checked before authorization, RESOURCE_EXHAUSTED, UNAVAILABLE): never OK, and never an answer
 *   that says something about what is there (NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION). The
 *   admin (root policy) may do anything. The others, by a list of what they may do (so a new
 *   method that lets them in shows up as a failure until someone decides it should):
 *     narrow (read and list on fuzz/**): Secrets.Get and Versions of names under fuzz/**,
 *       Secrets.List (only names under fuzz/** listed), Identities.Renew (its own certificate,
 *       no policy needed), and what any certificate may do;
 *     forged client (a name never issued, minted with the CA key): what any certificate may do;
 *     forged manager (a non-member id, minted with the CA key): what any certificate may do
 *       (Cluster.Status needs a current member with its recorded key, requireMember());
 *   where "what any certificate may do" is: Cluster.Members (requireCaller: clients check managers
 *   against it), Join.GetCaCertificate, the health service and gRPC reflection (schema only).
 * - A request over the server's 4 MiB limit may also be refused RESOURCE_EXHAUSTED by grpc-js
 *   before any of this runs.
 */
import * as grpc from '@grpc/grpc-js';
import { globMatches } from '../../src/state/policy.ts';

export const CALLERS = ['anonymous', 'admin', 'narrow', 'forged-client', 'forged-manager'] as const;
export type CallerName = (typeof CALLERS)[number];

/** The glob the fuzzer's narrow identity may read and list. */
export const NARROW_GLOB = 'fuzz/**';

export interface Outcome {
  readonly code: grpc.status;
  readonly details: string;
  /** A server stream that sent messages before it was cut at its deadline (not a hang). */
  readonly streamedBeforeDeadline: boolean;
}

export interface MethodFacts {
  /** Short name: Secrets.Put, or the full service name for non-Coffer services (grpc.health.v1.Health.Check). */
  readonly name: string;
  readonly service: string;
}

/** The request as the server decoded it (undefined if it does not decode), and the decoded answers. */
export interface Observed {
  readonly request: Record<string, unknown> | undefined;
  readonly responses: ReadonlyArray<Record<string, unknown> | undefined>;
  readonly largestMessageBytes: number;
}

const NEVER = new Set([grpc.status.INTERNAL, grpc.status.UNKNOWN, grpc.status.UNIMPLEMENTED, grpc.status.DATA_LOSS]);

function anyCertificateMayCall(method: MethodFacts): boolean {
  return (
    method.name === 'Cluster.Members' ||
    method.name === 'Join.GetCaCertificate' ||
    method.service === 'grpc.health.v1.Health' ||
    method.service.startsWith('grpc.reflection.')
  );
}

const statusName = (code: grpc.status): string => grpc.status[code] ?? String(code);

/** Why this answer is wrong, or null if it is one the server may give. */
export function judge(
  method: MethodFacts,
  caller: CallerName,
  outcome: Outcome,
  observed: Observed,
  maxReceiveBytes: number,
): string | null {
  const { code } = outcome;
  if (NEVER.has(code)) return `answered ${statusName(code)}: ${outcome.details}`;
  if (code === grpc.status.DEADLINE_EXCEEDED && !outcome.streamedBeforeDeadline)
    return `no answer before the deadline (a hang?): ${outcome.details}`;
  const oversized = observed.largestMessageBytes > maxReceiveBytes;
  if (oversized && code === grpc.status.RESOURCE_EXHAUSTED) return null;

  // Auth.Login is for anyone, certificate or not: it checks a proof, which no fuzzed request
  // holds (no role or method is configured here), so it never succeeds, and it says why.
  if (method.name === 'Auth.Login') {
    const allowed = [
      grpc.status.INVALID_ARGUMENT,
      grpc.status.NOT_FOUND,
      grpc.status.UNAUTHENTICATED,
      grpc.status.PERMISSION_DENIED,
      grpc.status.FAILED_PRECONDITION,
      grpc.status.RESOURCE_EXHAUSTED,
      grpc.status.UNAVAILABLE,
    ];
    return allowed.includes(code) ? null : `${caller} got ${statusName(code)} from Auth.Login: ${outcome.details}`;
  }
  if (caller === 'anonymous') {
    if (method.name === 'Join.GetCaCertificate') {
      return code === grpc.status.OK || code === grpc.status.INVALID_ARGUMENT
        ? null
        : `a caller without a certificate got ${statusName(code)} from GetCaCertificate (expected OK, or INVALID_ARGUMENT for a malformed request): ${outcome.details}`;
    }
    if (method.name === 'Join.JoinCluster') {
      const allowed = [
        grpc.status.INVALID_ARGUMENT,
        grpc.status.PERMISSION_DENIED,
        grpc.status.RESOURCE_EXHAUSTED,
        grpc.status.UNAVAILABLE,
        grpc.status.FAILED_PRECONDITION,
      ];
      return allowed.includes(code)
        ? null
        : `a caller without a certificate got ${statusName(code)} from JoinCluster: ${outcome.details}`;
    }
    return code === grpc.status.UNAUTHENTICATED
      ? null
      : `a caller without a certificate got ${statusName(code)}, not UNAUTHENTICATED: ${outcome.details}`;
  }

  if (code === grpc.status.UNAUTHENTICATED)
    return `a caller with a certificate of the cluster CA got UNAUTHENTICATED: ${outcome.details}`;
  if (method.name === 'Join.JoinCluster')
    return code === grpc.status.OK ? "JoinCluster succeeded, though no fuzzed address can prove a joiner's key" : null;
  if (caller === 'admin' || anyCertificateMayCall(method)) return null;

  if (caller === 'narrow') {
    if (method.name === 'Identities.Renew') return null;
    if (method.name === 'Secrets.List') {
      if (code !== grpc.status.OK) return null;
      const listed = observed.responses.flatMap((r) =>
        ((r?.['secrets'] as Array<{ name?: string }> | undefined) ?? []).map((s) => String(s.name)),
      );
      const outside = listed.filter((n) => !globMatches(NARROW_GLOB, n));
      return outside.length === 0
        ? null
        : `the narrow identity (list on ${NARROW_GLOB}) was shown ${outside
            .slice(0, 3)
            .map((n) => JSON.stringify(n))
            .join(', ')}`;
    }
    const name = observed.request?.['name'];
    if (
      (method.name === 'Secrets.Get' || method.name === 'Secrets.Versions') &&
      typeof name === 'string' &&
      globMatches(NARROW_GLOB, name)
    )
      return null;
  }
  // Beyond the caller's rights: only a refusal, and one that tells nothing of what is there
  // (NOT_FOUND, ALREADY_EXISTS or FAILED_PRECONDITION would say whether a name exists).
  if (REFUSALS.has(code)) return null;
  const asked =
    typeof observed.request?.['name'] === 'string'
      ? ` (name ${JSON.stringify(String(observed.request['name']).slice(0, 80))})`
      : '';
  return `${caller} got ${statusName(code)}${asked}, beyond its rights, where only a refusal may come (PERMISSION_DENIED, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE): ${outcome.details}`;
}

/** What a caller without the rights for a request may be told. */
const REFUSALS = new Set([
  grpc.status.PERMISSION_DENIED,
  grpc.status.INVALID_ARGUMENT,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.UNAVAILABLE,
]);
